"""SafeTensors files of ``state_dict()`` with PyTorch's names, and checkpoints, written atomically.

No pickle anywhere: arrays are safetensors, everything else is JSON in the safetensors header.

- :func:`save_state_dict` / :func:`load_state_dict`: a dict of arrays to and from a file; PyTorch reads
  it with ``safetensors.torch.load_file`` and ``model.load_state_dict``, and the reverse.
- :func:`save_model` / :func:`load_model`: a module's state; tied weights (one variable under several
  names) are stored once and re-tied on load, as ``safetensors.torch.save_model`` does.
- :func:`save_checkpoint` / :func:`load_checkpoint`: weights, optimizer state, scheduler state and
  metadata (epoch, step, metrics, package versions) in ONE file, so the write is one atomic rename:
  a process killed mid-save leaves the previous checkpoint intact. :func:`read_checkpoint_metadata`
  reads the metadata alone.

Example:
    >>> import tempfile, os
    >>> from asg import nn
    >>> model = nn.Linear(3, 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "linear.safetensors")
    >>> nn.save_model(model, path)
    >>> other = nn.Linear(3, 2)
    >>> _ = nn.load_model(other, path)
    >>> bool((other.weight.numpy() == model.weight.numpy()).all())
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from importlib import metadata as _metadata
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from .module import IncompatibleKeys, Module

__all__ = [
    "CheckpointManager",
    "load_checkpoint",
    "load_model",
    "load_state_dict",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "save_model",
    "save_state_dict",
]

_CHECKPOINT_KEY = "asg.checkpoint"
_TIED_KEY = "asg.tied"
# safetensors' own limit on the JSON header (MAX_HEADER_SIZE in the Rust crate)
_MAX_HEADER_BYTES = 100_000_000


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, rename, fsync the folder.

    A reader (or a crash at any moment) sees either the old file or the new one, never a partial file.
    An existing file's permission bits are kept; a symlink is written through to its target.
    """
    target = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(target) or "."
    mode = os.stat(target).st_mode & 0o7777 if os.path.exists(target) else None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _contiguous(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        if hasattr(v, "detach") and hasattr(v, "cpu"):
            v = v.detach().cpu().numpy()
        # np.require keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)
        out[k] = np.require(np.asarray(v), requirements="C")
    return out


def save_state_dict(
    state_dict: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a dict of arrays as a safetensors file, atomically (``metadata``: str -> str)."""
    atomic_write_bytes(path, save(_contiguous(state_dict), metadata=dict(metadata) if metadata else None))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a safetensors file into a dict of numpy arrays; errors name the file."""
    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)}: not a readable safetensors file ({err})") from None


def _header_problem(f: Any, size: int) -> tuple[str | None, dict[str, Any]]:
    """``(what is wrong or None, header)`` of the open safetensors file ``f`` of ``size`` bytes."""
    prefix = f.read(8)
    if len(prefix) < 8:
        return f"{size} bytes, shorter than the 8-byte header length", {}
    n = int.from_bytes(prefix, "little")
    if n > _MAX_HEADER_BYTES or n > size - 8:
        return f"header length {n} exceeds the file ({size} bytes) or the {_MAX_HEADER_BYTES} byte limit", {}
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"the header is not JSON ({err})", {}
    if not isinstance(header, dict):
        return f"the header is a JSON {type(header).__name__}, not an object", {}
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return "__metadata__ is not a str -> str object", {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no [begin, end] data_offsets", {}
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return f"the tensors end at byte {8 + n + end}, the file has {size} (truncated or padded)", {}
    return None, header


def _read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file, read and checked without reading any tensor data."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            problem, header = _header_problem(f, os.fstat(f.fileno()).st_size)
    except OSError as err:
        raise ValueError(f"{where}: not a readable safetensors file ({err})") from None
    if problem is not None:
        raise ValueError(f"{where}: not a readable safetensors file ({problem})")
    return header


def _read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    return dict(_read_header(path).get("__metadata__", {}))


def _dedupe(model: Module, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The model's state with each variable once, and ``{alias: stored name}`` for tied entries."""
    arrays: dict[str, np.ndarray] = {}
    tied: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, t in model._state_items():
        key = id(t.node.data)
        if key in first:
            tied[prefix + name] = first[key]
        else:
            first[key] = prefix + name
            arrays[prefix + name] = np.array(t.numpy(), copy=True)
    return arrays, tied


def save_model(
    model: Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Save ``model.state_dict()`` with PyTorch's names; tied weights stored once (the alias in the header)."""
    arrays, tied = _dedupe(model)
    meta = dict(metadata or {})
    if tied:
        meta[_TIED_KEY] = json.dumps(tied)
    save_state_dict(arrays, path, meta)


def load_model(model: Module, path: str | os.PathLike[str], strict: bool = True) -> IncompatibleKeys:
    """Load a file written by :func:`save_model` (or by PyTorch) into ``model``, by name.

    Keys tied in the model and stored once in the file are filled from the stored copy.
    """
    arrays = load_state_dict(path)
    tied = json.loads(_read_metadata(path).get(_TIED_KEY, "{}"))
    _, model_tied = _dedupe(model)
    for alias, stored in {**model_tied, **tied}.items():
        if alias not in arrays and stored in arrays:
            arrays[alias] = arrays[stored]
    try:
        return model.load_state_dict(arrays, strict=strict)
    except (KeyError, ValueError) as err:
        raise type(err)(f"{os.fspath(path)}: {err}") from None


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("asg-core", "asg-nn", "numpy"):
        with contextlib.suppress(_metadata.PackageNotFoundError):
            out[dist] = _metadata.version(dist)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _rng_states(model: Module) -> dict[str, Any]:
    """The random state a resumed run needs: each dropout-like layer's stream and the init generator."""
    from . import init

    layers = {}
    for path, m in model.named_modules():
        state = m.rng_state() if hasattr(m, "rng_state") else None
        if state is not None:
            layers[path] = state
    return {"layers": layers, "init": _jsonable(init.default_generator().bit_generator.state)}


def _load_rng_states(model: Module, saved: Mapping[str, Any], where: str) -> None:
    from . import init

    modules = dict(model.named_modules())
    for path, state in saved.get("layers", {}).items():
        if path in modules and hasattr(modules[path], "load_rng_state"):
            try:
                modules[path].load_rng_state(state)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
    if "init" in saved:
        init.default_generator().bit_generator.state = saved["init"]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Module,
    optimizer: Any = None,
    scheduler: Any = None,
    **metadata: Any,
) -> None:
    """Write weights, optimizer and scheduler state and JSON ``metadata`` to one safetensors file, atomically.

    Tensors are stored as ``model.<name>`` and ``optimizer.<index>.<state name>``; the optimizer's
    groups, the scheduler's state, the random state (each dropout layer's stream and the initialiser
    generator), ``metadata`` (epoch, step, metrics, ...) and the package versions go into the header as JSON.
    """
    arrays, tied = _dedupe(model, "model.")
    header: dict[str, Any] = {
        "format": "asg-checkpoint",
        "version": 1,
        "tied": tied,
        "metadata": _jsonable(metadata),
        "versions": _versions(),
    }
    header["rng"] = _rng_states(model)
    if optimizer is not None:
        sd = optimizer.state_dict()
        for index, entry in sd["state"].items():
            for name, value in entry.items():
                arrays[f"optimizer.{index}.{name}"] = np.asarray(value)
        header["optimizer"] = {
            "type": type(optimizer).__name__,
            "param_groups": _jsonable(sd["param_groups"]),
        }
    if scheduler is not None:
        header["scheduler"] = {"type": type(scheduler).__name__, "state": _jsonable(scheduler.state_dict())}
    save_state_dict(arrays, path, {_CHECKPOINT_KEY: json.dumps(header)})


def _checkpoint_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object :func:`save_checkpoint` wrote into the file's header, checked."""
    where = os.fspath(path)
    raw = _read_metadata(path).get(_CHECKPOINT_KEY)
    if raw is None:
        raise ValueError(f"{where}: not an asg checkpoint (no {_CHECKPOINT_KEY!r} entry in the header)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: the checkpoint header is not valid JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != "asg-checkpoint" or header.get("version") != 1:
        raise ValueError(f"{where}: unsupported checkpoint header (format/version): {str(header)[:200]}")
    if not isinstance(header.get("metadata", {}), dict):
        raise ValueError(f"{where}: the checkpoint metadata is not a JSON object")
    return header


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a checkpoint, as :func:`load_checkpoint` returns it, without loading any tensor.

    Only the safetensors header is read (its length checked against the file's size and safetensors'
    100 MB limit); a file that is not a safetensors file, or not a checkpoint, raises ``ValueError``
    naming it.

    Args:
        path: a file written by :func:`save_checkpoint` (or :class:`CheckpointManager`).

    Returns:
        The ``**metadata`` given to :func:`save_checkpoint` (JSON values), plus ``"versions"``: the
        asg package versions that wrote it.

    Example:
        >>> import os, tempfile
        >>> from asg import nn
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> nn.save_checkpoint(path, nn.Linear(2, 1), epoch=3, model_name="linear")
        >>> meta = nn.read_checkpoint_metadata(path)
        >>> meta["epoch"], meta["model_name"], "asg-nn" in meta["versions"]
        (3, 'linear', True)
    """
    header = _checkpoint_header(path)
    return {**header.get("metadata", {}), "versions": header.get("versions", {})}


def load_checkpoint(
    path: str | os.PathLike[str],
    model: Module,
    optimizer: Any = None,
    scheduler: Any = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its metadata (plus ``"versions"``)."""
    where = os.fspath(path)
    header = _checkpoint_header(path)
    arrays = load_state_dict(path)
    weights = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
    for alias, stored in header.get("tied", {}).items():
        weights[alias[len("model.") :]] = arrays[stored]
    try:
        model.load_state_dict(weights, strict=strict)
    except (KeyError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None
    _load_rng_states(model, header.get("rng", {}), where)
    if optimizer is not None:
        if "optimizer" not in header:
            raise ValueError(f"{where}: the checkpoint holds no optimizer state")
        saved_type = header["optimizer"]["type"]
        if saved_type != type(optimizer).__name__:
            raise ValueError(
                f"{where}: the checkpoint holds {saved_type} state, not {type(optimizer).__name__}"
            )
        state: dict[int, dict[str, np.ndarray]] = {}
        for k, v in arrays.items():
            if k.startswith("optimizer."):
                _, index, name = k.split(".", 2)
                state.setdefault(int(index), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": header["optimizer"]["param_groups"]})
    if scheduler is not None:
        if "scheduler" not in header:
            raise ValueError(f"{where}: the checkpoint holds no scheduler state")
        scheduler.load_state_dict(header["scheduler"]["state"])
    return {**header.get("metadata", {}), "versions": header.get("versions", {})}


class CheckpointManager:
    """Numbered checkpoints in a folder: keep the last ``max_to_keep``, optionally the best by a metric.

    ``save(step, model, optimizer, scheduler, metrics=...)`` writes ``ckpt-<step>.safetensors`` with
    :func:`save_checkpoint` and then an index (``checkpoints.json``, also written atomically) listing the
    kept files with their metrics; older files beyond the limit are deleted, except the best one when
    ``monitor`` is set. ``restore(model, ...)`` loads the latest (or ``best=True``) and returns its metadata.

    >>> import tempfile
    >>> from asg import nn
    >>> model = nn.Linear(2, 2)
    >>> manager = nn.CheckpointManager(tempfile.mkdtemp(), max_to_keep=2, monitor="val_loss")
    >>> for step, loss in enumerate([0.5, 0.2, 0.4, 0.3]):
    ...     _ = manager.save(step, model, metrics={"val_loss": loss})
    >>> [e["step"] for e in manager.entries], manager.best()["step"]
    ([1, 2, 3], 1)
    """

    INDEX = "checkpoints.json"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int = 3,
        monitor: str | None = None,
        mode: str = "min",
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"CheckpointManager: max_to_keep must be at least 1, got {max_to_keep}")
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager: mode must be 'min' or 'max', got {mode!r}")
        self.directory = os.fspath(directory)
        self.max_to_keep, self.monitor, self.mode = max_to_keep, monitor, mode
        os.makedirs(self.directory, exist_ok=True)
        index = os.path.join(self.directory, self.INDEX)
        self.entries: list[dict[str, Any]] = []
        if os.path.exists(index):
            try:
                with open(index) as f:
                    doc = json.load(f)
                self.entries = [
                    e for e in doc["entries"] if os.path.exists(os.path.join(self.directory, e["file"]))
                ]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{index}: not a readable checkpoint index ({err})") from None

    def best(self) -> dict[str, Any] | None:
        """The entry with the best ``monitor`` value (None without a monitor or entries)."""
        scored = [
            e for e in self.entries if self.monitor and e.get("metrics", {}).get(self.monitor) is not None
        ]
        if not scored:
            return None
        key = lambda e: e["metrics"][self.monitor]  # noqa: E731
        return min(scored, key=key) if self.mode == "min" else max(scored, key=key)

    def latest(self) -> dict[str, Any] | None:
        """The entry saved last (None when there is none)."""
        return self.entries[-1] if self.entries else None

    def path(self, entry: Mapping[str, Any]) -> str:
        """The file of an index entry (from :attr:`entries`, :meth:`latest` or :meth:`best`), inside
        :attr:`directory`.
        """
        return os.path.join(self.directory, entry["file"])

    def save(
        self,
        step: int,
        model: Module,
        optimizer: Any = None,
        scheduler: Any = None,
        metrics: Mapping[str, float] | None = None,
        **metadata: Any,
    ) -> str:
        """Write checkpoint ``step``, update the index, delete what is no longer kept; returns the path."""
        name = f"ckpt-{int(step):08d}.safetensors"
        metrics = _jsonable(dict(metrics or {}))
        path = os.path.join(self.directory, name)
        save_checkpoint(path, model, optimizer, scheduler, step=int(step), metrics=metrics, **metadata)
        self.entries = [e for e in self.entries if e["file"] != name] + [
            {"file": name, "step": int(step), "metrics": metrics}
        ]
        best = self.best()
        keep = self.entries[-self.max_to_keep :]
        if best is not None and best not in keep:
            keep = [best, *keep]
        removed = [e for e in self.entries if e not in keep]
        self.entries = keep
        atomic_write_bytes(
            os.path.join(self.directory, self.INDEX), json.dumps({"entries": self.entries}, indent=1).encode()
        )
        for e in removed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, e["file"]))
        return path

    def restore(
        self, model: Module, optimizer: Any = None, scheduler: Any = None, best: bool = False
    ) -> dict[str, Any] | None:
        """Load the latest checkpoint (or the best) into the objects; None when there is nothing to resume."""
        entry = self.best() if best else self.latest()
        if entry is None:
            return None
        return load_checkpoint(self.path(entry), model, optimizer, scheduler)
