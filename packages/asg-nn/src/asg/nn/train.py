"""One-call training steps, an inference function, and ``fit``, a Keras-shaped training loop.

:func:`compile_train_step` builds one graph holding the forward pass, the loss, the gradients,
optional clipping, the optimizer update and every layer's state update (BatchNorm statistics, dropout
streams), and compiles it once: ``loss = step(x, y)``. Input shapes come from ``inputs=`` or from the
first batch (its first dimension made symbolic, so a smaller last batch reuses the graph).

Example:
    >>> import numpy as np
    >>> from asg import nn
    >>> nn.init.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    >>> opt = nn.optim.Adam(model.parameters(), lr=0.05)
    >>> step = nn.compile_train_step(model, nn.MSELoss(), opt)
    >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    >>> y = x[:, :1] * x[:, 1:]
    >>> losses = [step(x, y) for _ in range(100)]
    >>> losses[-1] < 0.2 * losses[0]
    True
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

import asg.core as ag

from .amp import LossScaler, half_precision
from .module import Module, capture_updates
from .optim import Optimizer, clip_grad_norm, clip_grad_value

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "InferenceFunction",
    "LRSchedulerCallback",
    "ModelCheckpoint",
    "TrainStep",
    "compile_eval_step",
    "compile_inference",
    "compile_train_step",
    "fit",
]

InputSpec = ag.Tensor | tuple[Sequence[Any], Any]


def _inputs_from(
    specs: Sequence[InputSpec] | None, arrays: Sequence[np.ndarray], names: Sequence[str]
) -> list[ag.Tensor]:
    """Graph inputs from explicit specs, or from example arrays with a symbolic batch dimension."""
    if specs is not None:
        out = []
        for name, spec in zip(names, specs, strict=False):
            if isinstance(spec, ag.Tensor):
                out.append(spec)
            else:
                shape, dtype = spec
                out.append(ag.input(name, tuple(shape), dtype))
        return out
    out = []
    for name, a in zip(names, arrays, strict=True):
        a = np.asarray(a)
        dtype = "float32" if a.dtype.kind == "f" else "int64" if a.dtype.kind in "iu" else a.dtype.name
        shape = ("B", *a.shape[1:]) if a.ndim else ()
        out.append(ag.input(name, shape, dtype))
    return out


class _Mode:
    """Build a graph with the model in a given mode, restoring each module's mode afterwards."""

    def __init__(self, model: Module, training: bool) -> None:
        self.model, self.training = model, training

    def __enter__(self) -> None:
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved:
            object.__setattr__(m, "training", mode)


def _input_names(count: int, with_target: bool = True) -> list[str]:
    """Graph input names of a step over ``count`` arrays: ``x``/``target``, or ``input0...`` (+ ``target``)."""
    if not with_target:
        return ["x"] if count == 1 else [f"input{i}" for i in range(count)]
    return ["x", "target"] if count == 2 else [f"input{i}" for i in range(count - 1)] + ["target"]


def _trace_loss(
    model: Module,
    loss_fn: Callable[..., ag.Tensor],
    specs: Sequence[InputSpec] | None,
    arrays: Sequence[np.ndarray] | None,
    count: int,
    what: str,
) -> tuple[list[ag.Tensor], ag.Tensor, ag.Tensor, dict[ag.Tensor, ag.Tensor]]:
    """``loss_fn(model(*inputs), target)`` traced in training mode: ``(inputs, output, loss, state updates)``."""
    xs = _inputs_from(specs, arrays or [], _input_names(count))
    with _Mode(model, True), capture_updates() as state_updates:
        out = model(*xs[:-1])
        loss = loss_fn(out, xs[-1])
    if not isinstance(loss, ag.Tensor) or loss.ndim != 0:
        raise ValueError(
            f"{what}: the loss function must return a scalar Tensor, got {loss!r} (use reduction='mean' or 'sum')"
        )
    return xs, out, loss, state_updates


def _half_precision_step(
    loss: ag.Tensor, out: ag.Tensor, state_updates: dict[ag.Tensor, ag.Tensor]
) -> tuple[ag.Tensor, ag.Tensor, ag.Tensor, dict[ag.Tensor, ag.Tensor]]:
    """The float16 rewrite of a traced step (float32 master weights): ``(half loss, loss, output, updates)``.

    ``loss``, ``output`` and the state updates come back in their own dtypes; the half loss is the float16
    one to differentiate.
    """
    half = half_precision([loss, out, *state_updates.values()])
    updates = {var: ag.cast(h, var.dtype) for var, h in zip(state_updates, half[2:], strict=True)}
    return half[0], ag.cast(half[0], "float32"), ag.cast(half[1], out.dtype), updates


def _optimizer_updates(
    optimizer: Optimizer,
    grads: Sequence[ag.Tensor],
    clip_value: float | None,
    clip_norm: float | None,
    scaler: LossScaler | None,
) -> tuple[dict[ag.Tensor, ag.Tensor], list[ag.Tensor]]:
    """Clip ``grads`` (by value, then by norm), then the optimizer's updates, gated by ``scaler`` when given.

    Returns the updates and the extra outputs: ``[total norm before clipping]`` with ``clip_norm``, else ``[]``.
    """
    extra: list[ag.Tensor] = []
    grads = list(grads)
    if clip_value is not None:
        grads = clip_grad_value(grads, clip_value)
    if clip_norm is not None:
        grads, norm = clip_grad_norm(grads, clip_norm)
        extra.append(norm)
    updates = optimizer.updates(grads)
    if scaler is not None:  # non-finite gradients: no optimizer step, the scale backs off
        updates = scaler.gate(updates)
    return updates, extra


def _check_batch(batch: Sequence[Any]) -> None:
    if len(batch) < 2:
        raise TypeError(f"a training step takes the model inputs and the target, got {len(batch)} array(s)")


class TrainStep:
    """A compiled training step: ``loss = step(*inputs, target)`` updates the model and optimizer in place.

    With ``accumulate=k`` the gradients of ``k`` consecutive calls are summed in state variables and the
    optimizer steps on every ``k``-th call with their mean (clipping applies to that mean): two compiled
    functions share the forward and backward nodes, one adding to the accumulators, one updating. With
    ``mixed_precision`` as well, each call runs a scaled float16 backward and adds its float32 gradients
    to the sums; the ``k``-th call unscales the sum once and skips the whole step (and backs the scale off,
    once) if any micro-batch overflowed, as ``torch.amp.GradScaler`` with accumulation.

    Attributes:
        function: the compiled :class:`asg.core.Function` that updates the parameters (built at the first
            call without ``inputs=``); ``accumulate_function`` the one that only accumulates.
        outputs: the model's outputs of the last call (numpy), when built with ``return_outputs=True``.
        grad_norm: the total gradient norm of the last update (with ``clip_grad_norm``), before clipping.
    """

    def __init__(
        self,
        model: Module,
        loss_fn: Callable[..., ag.Tensor],
        optimizer: Optimizer,
        inputs: Sequence[InputSpec] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        return_outputs: bool = False,
        accumulate: int = 1,
        mixed_precision: bool = False,
        loss_scaler: LossScaler | None = None,
        **compile_options: Any,
    ) -> None:
        self.mixed_precision = mixed_precision
        self.loss_scaler = (loss_scaler or LossScaler()) if mixed_precision else None
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"compile_train_step: accumulate must be a positive integer, got {accumulate!r}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.clip_norm, self.clip_value = clip_grad_norm, clip_grad_value
        self.return_outputs, self.accumulate = return_outputs, accumulate
        self.compile_options = compile_options
        self.function: ag.Function | None = None
        self.accumulate_function: ag.Function | None = None
        self.outputs: Any = None
        self.grad_norm: float | None = None
        self.calls = 0
        self._specs = inputs
        if inputs is not None:
            self._build(None, len(inputs))

    def _build(self, arrays: Sequence[np.ndarray] | None, count: int) -> None:
        xs, out, loss, state_updates = _trace_loss(
            self.model, self.loss_fn, self._specs, arrays, count, "compile_train_step"
        )
        params, scaler, k = self.optimizer.params, self.loss_scaler, self.accumulate
        if scaler is not None:  # float16 forward and backward, float32 master weights
            half_loss, loss, out, state_updates = _half_precision_step(loss, out, state_updates)
            grads = scaler.scaled_gradients(half_loss, params)  # unscaled below, after accumulating
        else:
            grads = ag.grad(loss, params)
        outs = [loss, *([out] if self.return_outputs else [])]
        if k > 1:
            # float32 sums (of scaled gradients with a scaler: the scale is constant between steps)
            sums = [ag.state(np.zeros(p.shape, p.dtype), name=f"accumulated.{p.name}") for p in params]
            self.accumulate_function = ag.compile(
                outs,
                inputs=xs,
                updates={**state_updates, **{a: a + g for a, g in zip(sums, grads, strict=True)}},
                **self.compile_options,
            )
            grads = [a + g for a, g in zip(sums, grads, strict=True)]
            state_updates = {**state_updates, **{a: ag.zeros_like(a) for a in sums}}
        if scaler is not None:  # one unscale and finiteness test per optimizer step, on the mean
            grads = scaler.unscale(grads, divide_by=k)
        elif k > 1:
            grads = [g * (1.0 / k) for g in grads]
        # overflowed gradients: no optimizer step (layer statistics still move)
        step_updates, extra = _optimizer_updates(
            self.optimizer, grads, self.clip_value, self.clip_norm, self.loss_scaler
        )
        # Last layers first: a plan runs the nodes in the order the updates reach them, so each weight's
        # gradient is computed as soon as its layer's backward is done and its activations are freed early.
        updates = {**state_updates, **dict(reversed(list(step_updates.items())))}
        self.function = ag.compile([*outs, *extra], inputs=xs, updates=updates, **self.compile_options)

    def __call__(self, *batch: Any) -> float:
        _check_batch(batch)
        if self.function is None:
            self._build([np.asarray(b) for b in batch], len(batch))
        self.calls += 1
        updating = self.calls % self.accumulate == 0
        fn = self.function if updating else self.accumulate_function
        results = fn(*batch)
        if self.return_outputs:
            self.outputs = results[1]
        if updating and self.clip_norm is not None:
            self.grad_norm = float(results[-1])
        return float(results[0])


def compile_train_step(
    model: Module,
    loss_fn: Callable[..., ag.Tensor],
    optimizer: Optimizer,
    inputs: Sequence[InputSpec] | None = None,
    *,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    return_outputs: bool = False,
    accumulate: int = 1,
    mixed_precision: bool = False,
    loss_scaler: LossScaler | None = None,
    **compile_options: Any,
) -> TrainStep:
    """One compiled training step: forward, loss, gradients, clipping and the optimizer update.

    Args:
        model: called on every batch array but the last (the target).
        loss_fn: ``loss_fn(model_output, target) -> scalar Tensor`` (a loss module works).
        optimizer: an :mod:`asg.nn.optim` optimizer over (some of) the model's parameters.
        inputs: ``[ag.input(...), ...]`` or ``[(shape, dtype), ...]``, target last; default: taken
            from the first batch with a symbolic batch dimension.
        clip_grad_norm, clip_grad_value: clip inside the compiled step (the norm is ``step.grad_norm``).
        accumulate: sum the gradients of this many calls and step the optimizer on every last one, with
            their mean (gradient accumulation).
        mixed_precision: compute the forward and backward pass in float16 (the graph rewrite
            :func:`asg.nn.amp.half_precision`) with float32 master weights and dynamic loss scaling
            (``loss_scaler``, default :class:`asg.nn.amp.LossScaler()`); with ``accumulate`` the loss
            scale is tested and updated once per optimizer step.
        compile_options: passed to :func:`asg.core.compile` (``backend=``, ...).

    Returns:
        A :class:`TrainStep`; ``step(x, y)`` returns the loss as a float.
    """
    return TrainStep(
        model,
        loss_fn,
        optimizer,
        inputs,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        return_outputs=return_outputs,
        accumulate=accumulate,
        mixed_precision=mixed_precision,
        loss_scaler=loss_scaler,
        **compile_options,
    )


class InferenceFunction:
    """The model in eval mode compiled without gradient nodes: ``outputs = infer(*inputs)``."""

    def __init__(
        self,
        model: Module,
        inputs: Sequence[InputSpec] | None = None,
        loss_fn: Callable[..., ag.Tensor] | None = None,
        **compile_options: Any,
    ) -> None:
        self.model, self.loss_fn, self.compile_options = model, loss_fn, compile_options
        self._specs = inputs
        self.function: ag.Function | None = None
        if inputs is not None:
            self._build(None, len(inputs))

    def _build(self, arrays: Sequence[np.ndarray] | None, count: int) -> None:
        xs = _inputs_from(self._specs, arrays or [], _input_names(count, self.loss_fn is not None))
        with _Mode(self.model, False), capture_updates():
            if self.loss_fn is None:
                out = self.model(*xs)
                outs = list(out) if isinstance(out, (tuple, list)) else out
            else:
                out = self.model(*xs[:-1])
                outs = [self.loss_fn(out, xs[-1]), out]
        self.function = ag.compile(outs, inputs=xs, **self.compile_options)

    def __call__(self, *arrays: Any) -> Any:
        if self.function is None:
            self._build([np.asarray(a) for a in arrays], len(arrays))
        return self.function(*arrays)


def compile_inference(
    model: Module, inputs: Sequence[InputSpec] | None = None, **compile_options: Any
) -> InferenceFunction:
    """The model's forward pass in eval mode, compiled with no gradient or update nodes.

    >>> import numpy as np
    >>> from asg import nn
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    >>> infer = nn.compile_inference(model)
    >>> infer(np.ones((4, 3), "float32")).shape
    (4, 2)
    >>> sorted(infer.function.graph.op_counts())
    ['add', 'input', 'matmul', 'parameter', 'transpose']
    """
    return InferenceFunction(model, inputs, **compile_options)


def compile_eval_step(
    model: Module,
    loss_fn: Callable[..., ag.Tensor],
    inputs: Sequence[InputSpec] | None = None,
    **compile_options: Any,
) -> InferenceFunction:
    """Eval-mode ``[loss, outputs] = f(*inputs, target)``, with no gradients (what ``fit`` validates with)."""
    return InferenceFunction(model, inputs, loss_fn, **compile_options)


# --------------------------------------------------------------------------- callbacks
class Callback:
    """Base class of ``fit`` callbacks (Keras' protocol); every hook receives the ``logs`` dict.

    ``self.trainer`` is the running :class:`_Trainer` (``trainer.model``, ``trainer.optimizer``,
    ``trainer.stop_training``, ``trainer.history``).
    """

    trainer: Any = None

    def set_trainer(self, trainer: Any) -> None:
        """Called by ``fit`` before training: keep the trainer as ``self.trainer``."""
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Called once before the first epoch (``logs`` is empty)."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Called once after the last epoch (or an early stop) with the last epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called before epoch ``epoch`` (from 0) with the previous epoch's logs."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called after epoch ``epoch`` with its logs: ``loss``, the metrics, and ``val_*`` when validating.

        A callback may add entries (``LRSchedulerCallback`` logs ``lr``) or set
        ``self.trainer.stop_training = True`` to stop after this epoch.
        """

    def on_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each training step with ``{"batch": index, "size": batch size}``."""

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each training step; ``logs`` also holds the step's ``loss``."""


class History(Callback):
    """Per-epoch values of every logged metric: ``history.history["loss"]``, ``["val_loss"]`` ..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Append the epoch and each logged value."""
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights.

    ``stopper``: any object with ``step(value, state=callable) -> bool`` and ``restore()`` (asg-data's
    ``EarlyStopping`` fits) takes over the decision, with no import of asg-data here.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_best_weights: bool = False,
        stopper: Any = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best_weights, self.stopper = restore_best_weights, stopper
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self._best_state: dict[str, np.ndarray] | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Check ``monitor`` (``KeyError`` if not logged) and set ``trainer.stop_training`` after ``patience``
        epochs without improvement.
        """
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping: monitor {self.monitor!r} is not logged; logged values: {', '.join(logs)}"
            )
        value = float(logs[self.monitor])
        model = self.trainer.model
        if self.stopper is not None:
            stop = bool(self.stopper.step(value, state=model.state_dict))
        else:
            if _improved(value, self.best, self.mode, self.min_delta):
                self.best, self.best_epoch, self.wait = value, epoch, 0
                if self.restore_best_weights:
                    self._best_state = model.state_dict()
            else:
                self.wait += 1
            stop = self.wait >= self.patience
        if stop:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """With ``restore_best_weights``, load the best epoch's weights into the model."""
        if not self.restore_best_weights:
            return
        if self.stopper is not None:
            best = self.stopper.restore()
            if best is not None:
                self.trainer.model.load_state_dict(best)
        elif self._best_state is not None:
            self.trainer.model.load_state_dict(self._best_state)


class LRSchedulerCallback(Callback):
    """Step an LR scheduler after every epoch (``interval="epoch"``) or every batch (``"batch"``)."""

    def __init__(self, scheduler: Any, interval: str = "epoch") -> None:
        if interval not in ("epoch", "batch"):
            raise ValueError(f"LRSchedulerCallback: interval must be 'epoch' or 'batch', got {interval!r}")
        self.scheduler, self.interval = scheduler, interval

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Step the scheduler when ``interval="batch"``."""
        if self.interval == "batch":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Log the epoch's ``lr`` and step the scheduler when ``interval="epoch"``."""
        logs["lr"] = float(self.scheduler.get_last_lr()[0])
        if self.interval == "epoch":
            self.scheduler.step()


class ModelCheckpoint(Callback):
    """Save a checkpoint (weights, optimizer, schedulers, metadata) after each epoch, atomically.

    ``path`` may hold ``{epoch}`` and logged names (``"ckpt-{epoch:03d}-{val_loss:.3f}.safetensors"``).
    With ``save_best_only`` a file is written only when ``monitor`` improves.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "min",
        save_best_only: bool = False,
        scheduler: Any = None,
    ) -> None:
        self.path, self.monitor, self.mode = os.fspath(path), monitor, mode
        self.save_best_only, self.scheduler = save_best_only, scheduler
        self.best: float | None = None
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Save a checkpoint to ``path`` (formatted with the epoch and logs); with ``save_best_only`` only
        when ``monitor`` improved.
        """
        from .serialization import save_checkpoint

        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                raise KeyError(
                    f"ModelCheckpoint: monitor {self.monitor!r} is not logged; logged: {', '.join(logs)}"
                )
            if not _improved(float(value), self.best, self.mode, 0.0):
                return
            self.best = float(value)
        path = self.path.format(epoch=epoch, **logs)
        save_checkpoint(
            path,
            self.trainer.model,
            self.trainer.optimizer,
            self.scheduler,
            epoch=epoch,
            step=self.trainer.global_step,
            metrics=dict(logs),
        )
        self.saved.append(path)


class CSVLogger(Callback):
    """Append one row per epoch (epoch and every logged value) to a CSV file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._keys: list[str] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Write the epoch's row (the header first, from the first epoch's logged names)."""
        new = self._keys is None
        if new:
            self._keys = list(logs)
        with open(self.path, "a" if not new else "w", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", *self._keys])
            writer.writerow([epoch, *(logs.get(k, "") for k in self._keys)])


# --------------------------------------------------------------------------- fit
class _MetricSet:
    """Per-epoch accumulation of metrics: objects with reset/update/compute, or f(y_true, y_pred) averaged."""

    def __init__(self, metrics: Mapping[str, Any] | Sequence[Any] | None) -> None:
        if metrics is None:
            items: list[tuple[str, Any]] = []
        elif isinstance(metrics, Mapping):
            items = list(metrics.items())
        else:
            items = [(getattr(m, "__name__", type(m).__name__).lower(), m) for m in metrics]
        self.items = items

    def reset(self) -> None:
        self.sums = {name: 0.0 for name, _ in self.items}
        self.count = 0
        for _, m in self.items:
            if hasattr(m, "update") and hasattr(m, "reset"):
                m.reset()

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        n = len(y_true) if np.ndim(y_true) else 1
        self.count += n
        for name, m in self.items:
            if hasattr(m, "update") and hasattr(m, "compute"):
                m.update(y_true, y_pred)
            else:
                self.sums[name] += float(m(y_true, y_pred)) * n

    def compute(self) -> dict[str, float]:
        out = {}
        for name, m in self.items:
            if hasattr(m, "update") and hasattr(m, "compute"):
                out[name] = float(m.compute())
            else:
                out[name] = self.sums[name] / max(self.count, 1)
        return out


class _Trainer:
    def __init__(self, model: Module, optimizer: Optimizer, history: History) -> None:
        self.model, self.optimizer, self.history = model, optimizer, history
        self.stop_training = False
        self.global_step = 0


def _split(batch: Any) -> tuple[Any, ...]:
    if isinstance(batch, Mapping):
        return tuple(batch.values())
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    raise TypeError(f"fit: a batch must be a tuple (inputs..., target), got {type(batch).__name__}")


def fit(
    model: Module,
    loss: Callable[..., ag.Tensor],
    optimizer: Optimizer,
    train_batches: Iterable[Any],
    epochs: int = 1,
    val_batches: Iterable[Any] | None = None,
    metrics: Mapping[str, Any] | Sequence[Any] | None = None,
    callbacks: Sequence[Callback] | None = None,
    *,
    progress: bool | None = None,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    mixed_precision: bool = False,
    loss_scaler: LossScaler | None = None,
    step: TrainStep | None = None,
    **compile_options: Any,
) -> History:
    """Train ``model`` for ``epochs`` over ``train_batches`` (any re-iterable of ``(inputs..., target)``).

    Each epoch logs ``loss`` (the sample-weighted mean over the epoch), each metric, and with
    ``val_batches`` ``val_loss`` and ``val_<metric>``, computed in eval mode with no gradients.
    Metrics are objects with ``reset/update(y_true, y_pred)/compute`` or functions
    ``f(y_true, y_pred) -> float`` (asg-data's metrics are both kinds). A tqdm progress bar shows loss,
    metrics and throughput when stderr is a terminal (``progress=`` forces it on or off).
    ``clip_grad_norm``, ``accumulate``, ``mixed_precision`` and ``loss_scaler`` are passed to
    :func:`compile_train_step` (validation runs in float32).

    Returns:
        the :class:`History` (the last callback each hook reaches, so it records what others log, e.g. ``lr``).
    """
    from tqdm.auto import tqdm

    history = History()
    trainer = _Trainer(model, optimizer, history)
    cbs: list[Callback] = [*(callbacks or []), history]  # history last: it sees what callbacks add to logs
    for cb in cbs:
        cb.set_trainer(trainer)
    metric_set = _MetricSet(metrics)
    want_outputs = bool(metric_set.items)
    train_step = step or TrainStep(
        model,
        loss,
        optimizer,
        clip_grad_norm=clip_grad_norm,
        return_outputs=want_outputs,
        accumulate=accumulate,
        mixed_precision=mixed_precision,
        loss_scaler=loss_scaler,
        **compile_options,
    )
    evaluate = compile_eval_step(model, loss, **compile_options) if val_batches is not None else None
    show = sys.stderr.isatty() if progress is None else progress
    logs: dict[str, Any] = {}
    for cb in cbs:
        cb.on_train_begin(logs)
    for epoch in range(epochs):
        for cb in cbs:
            cb.on_epoch_begin(epoch, logs)
        metric_set.reset()
        total, seen = 0.0, 0
        start = time.perf_counter()
        total_batches = len(train_batches) if hasattr(train_batches, "__len__") else None  # type: ignore[arg-type]
        # one iterator per epoch: tqdm.auto's asyncio class calls iter() on what it is given, and
        # iterating it again would start a second epoch (a DataLoader reshuffles on each iter())
        bar = tqdm(
            iter(train_batches),
            total=total_batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not show,
            leave=True,
        )
        for i, batch in enumerate(bar):
            arrays = _split(batch)
            batch_logs: dict[str, Any] = {"batch": i, "size": len(arrays[-1])}
            for cb in cbs:
                cb.on_batch_begin(i, batch_logs)
            value = train_step(*arrays)
            n = len(arrays[-1]) if np.ndim(arrays[-1]) else 1
            total += value * n
            seen += n
            trainer.global_step += 1
            if want_outputs:
                metric_set.update(np.asarray(arrays[-1]), np.asarray(train_step.outputs))
            batch_logs["loss"] = value
            for cb in cbs:
                cb.on_batch_end(i, batch_logs)
            if show:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{total / seen:.4f}", samples_per_s=f"{rate:.0f}")
        bar.close()
        if seen == 0:
            raise ValueError(
                "fit: train_batches yielded no batches (pass a re-iterable, such as a list or DataLoader)"
            )
        logs = {"loss": total / seen, **metric_set.compute()}
        if evaluate is not None:
            logs.update(_evaluate(evaluate, val_batches, metric_set))  # type: ignore[arg-type]
        if show:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break
    for cb in cbs:
        cb.on_train_end(logs)
    return history


def _evaluate(
    evaluate: InferenceFunction, batches: Iterable[Any], metric_set: _MetricSet
) -> dict[str, float]:
    metric_set.reset()
    total, seen = 0.0, 0
    for batch in batches:
        arrays = _split(batch)
        value, out = evaluate(*arrays)
        n = len(arrays[-1]) if np.ndim(arrays[-1]) else 1
        total += float(value) * n
        seen += n
        if metric_set.items:
            metric_set.update(np.asarray(arrays[-1]), np.asarray(out))
    if seen == 0:
        raise ValueError("fit: val_batches yielded no batches")
    return {"val_loss": total / seen, **{f"val_{k}": v for k, v in metric_set.compute().items()}}
