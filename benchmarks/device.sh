#!/usr/bin/env bash
# Every benchmark that needs the lent GPU machine, in one call (each writes its table to $OUT):
#
#   device run, carrying .gl and .whl (see ../shared/device/README.md):
#     bash benchmarks/device.sh [gpu|cpu|all]
#
# gpu: fp32 matmul TFLOP/s and host cost per dispatch (benchmarks/gpu_matmul.py), then the reference GPT
#      training step on wgpu vs PyTorch CUDA eager (benchmarks/gpu_gpt_step.py).
# cpu: training steps on 2 pinned cores, ASG (numpy and numpy-jit) vs PyTorch CPU eager, each framework in
#      its own process (benchmarks/train_steps.py --scale).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-all}
out=${OUT:-/tmp/asg-bench}
mkdir -p "$out"
source .gl/preamble.sh
export PYTHONPATH=packages/asg-core/src:packages/asg-nn/src:packages/asg-data/src:packages/asg-gpu/src${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c 'import numpy, torch; print("numpy", numpy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'
if [ "$what" = gpu ] || [ "$what" = all ]; then
    timeout 200 python3 benchmarks/gpu_matmul.py 2>&1 | tee "$out/gpu_matmul.txt"
    timeout 280 python3 benchmarks/gpu_gpt_step.py 2>&1 | tee "$out/gpu_gpt_step.txt"
fi
if [ "$what" = cpu ] || [ "$what" = all ]; then
    # The OpenBLAS variables this workplace sets slow a current numpy: unset them for the benchmark only.
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE taskset -c 2,3 timeout 420 \
        python3 benchmarks/train_steps.py --threads 2 --scale 2>&1 | tee "$out/train_steps.txt"
fi
