"""The module system: parameters registered by attribute assignment, PyTorch's dotted names.

A :class:`Module` holds its parameters and buffers as asg-core variables (``ag.parameter`` /
``ag.state``). Calling a module on a :class:`~asg.core.Tensor` runs :meth:`Module.forward` inside an
asg-core name scope equal to the module's path (``h.0.attn.c_attn``), and builds graph nodes; nothing
is computed until the graph is compiled. Parameter nodes carry their dotted names
(``h.0.attn.c_attn.weight``), so printouts, errors and the viewer show them.

Training-mode layers that update state (BatchNorm's running statistics, Dropout's random stream)
add ``{variable: new value}`` pairs with :meth:`Module.add_update`; :func:`capture_updates` collects
them while a graph is built, to be passed to ``ag.compile(updates=...)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, overload

import numpy as np

import asg.core as ag
from asg.core.shapes import format_shape

__all__ = [
    "IncompatibleKeys",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "Sequential",
    "StateDictError",
    "capture_updates",
    "is_parameter",
]


def Parameter(value: Any, dtype: Any = None, trainable: bool = True, name: str | None = None) -> ag.Tensor:
    """A trainable variable for a module attribute (float64 data becomes float32 unless ``dtype`` says).

    >>> import numpy as np
    >>> from asg import nn
    >>> w = nn.Parameter(np.zeros((2, 3)))
    >>> w.shape, w.dtype
    ((2, 3), 'float32')
    """
    array = np.asarray(value)
    if dtype is None and array.dtype == np.float64:
        dtype = "float32"
    return ag.parameter(array, name=name, dtype=dtype, trainable=trainable)


def is_parameter(value: Any) -> bool:
    """True for a Tensor that is a variable (``ag.parameter`` or ``ag.state``)."""
    return isinstance(value, ag.Tensor) and value.node.op == "parameter"


# --------------------------------------------------------------------------- update collection
_COLLECTORS: contextvars.ContextVar[tuple[dict[ag.Tensor, ag.Tensor], ...]] = contextvars.ContextVar(
    "asg_nn_update_collectors", default=()
)
_CALL_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("asg_nn_call_depth", default=0)


@contextlib.contextmanager
def capture_updates() -> Iterator[dict[ag.Tensor, ag.Tensor]]:
    """Collect the state updates that modules add while a graph is built inside the block.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg import nn
    >>> bn = nn.BatchNorm1d(3)
    >>> x = ag.input("x", ("B", 3))
    >>> with nn.capture_updates() as updates:
    ...     y = bn(x)
    >>> sorted(t.name for t in updates)
    ['num_batches_tracked', 'running_mean', 'running_var']
    """
    collected: dict[ag.Tensor, ag.Tensor] = {}
    token = _COLLECTORS.set((*_COLLECTORS.get(), collected))
    try:
        yield collected
    finally:
        _COLLECTORS.reset(token)


def _scope(path: str) -> contextlib.AbstractContextManager[Any]:
    """``ag.scope`` for the module path ``path``; asg-core joins nested scopes, so enter the remainder."""
    scope = getattr(ag, "scope", None)
    if scope is None or not path:
        return contextlib.nullcontext()
    current = getattr(ag, "current_scope", lambda: None)() or ""
    if current == path:
        return contextlib.nullcontext()
    if current and path.startswith(current + "."):
        return scope(path[len(current) + 1 :])
    return scope(path)


# --------------------------------------------------------------------------- state_dict errors
class IncompatibleKeys(NamedTuple):
    """What a non-strict :meth:`Module.load_state_dict` did not load (PyTorch's named tuple)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(KeyError, ValueError):
    """A state dict that does not fit the module: lists missing keys, unexpected keys and shape mismatches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# --------------------------------------------------------------------------- Module
class Module:
    """Base class of every layer and model, shaped like ``torch.nn.Module``.

    Assigning a variable (``nn.Parameter``, ``ag.parameter``) to an attribute registers it as a
    parameter; a non-trainable variable (``ag.state``) or :meth:`register_buffer` registers a buffer;
    assigning a Module registers a child. ``forward`` builds graph nodes from Tensors.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> from asg import nn
        >>> class MLP(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1 = nn.Linear(4, 8)
        ...         self.fc2 = nn.Linear(8, 2)
        ...
        ...     def forward(self, x):
        ...         return self.fc2(nn.functional.relu(self.fc1(x)))
        >>> model = MLP()
        >>> [name for name, _ in model.named_parameters()]
        ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
        >>> y = model(ag.input("x", ("B", 4)))
        >>> y.shape
        ('B', 2)
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_path", None)

    # ------------------------------------------------------------------ attribute registration
    def _check_init(self) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning parameters or submodules"
            )

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Module):
            self._check_init()
            self._discard(name)
            self._modules[name] = value
        elif is_parameter(value):
            self._check_init()
            self._discard(name)
            if value.node.data.trainable:
                self._parameters[name] = value
            else:
                self._buffers[name] = value
        elif value is None and "_parameters" in self.__dict__ and name in self._parameters:
            self._parameters[name] = None
        elif value is None and "_parameters" in self.__dict__ and name in self._buffers:
            self._buffers[name] = None
        else:
            if "_parameters" in self.__dict__:
                self._discard(name)
            object.__setattr__(self, name, value)

    def _discard(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters or name in self._buffers or name in self._modules:
            self._discard(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._parameters, *self._buffers, *self._modules})

    def register_parameter(self, name: str, param: ag.Tensor | None) -> None:
        """Register ``param`` (a trainable variable, or None for an absent optional parameter)."""
        if param is not None and not (is_parameter(param) and param.node.data.trainable):
            raise TypeError(
                f"{type(self).__name__}.register_parameter({name!r}): expected a trainable variable "
                f"(nn.Parameter or ag.parameter), got {param!r}"
            )
        self._check_init()
        self._discard(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, value: Any, persistent: bool = True) -> None:
        """Register a non-trainable variable (running statistics, counters); ``value`` may be an array.

        Persistent buffers are part of :meth:`state_dict`, as in PyTorch.
        """
        self._check_init()
        if value is not None and not is_parameter(value):
            array = np.asarray(value)
            value = ag.state(array.astype(np.float32) if array.dtype == np.float64 else array, name=name)
        elif value is not None and value.node.data.trainable:
            raise TypeError(
                f"{type(self).__name__}.register_buffer({name!r}): a trainable parameter cannot be a buffer; "
                "use register_parameter"
            )
        self._discard(name)
        self._buffers[name] = value
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a child module under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module({name!r}): expected a Module, got {module!r}")
        self._check_init()
        self._discard(name)
        self._modules[name] = module

    register_module = add_module

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "", memo: set[int] | None = None) -> Iterator[tuple[str, Module]]:
        """``(dotted path, module)`` for this module and every descendant, each module once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        """This module and every descendant, each once (:meth:`named_modules` without the paths)."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for each direct child, in registration order."""
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        """The direct child modules, in registration order."""
        for _, child in self.named_children():
            yield child

    def _named_members(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, ag.Tensor]]:
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for path, module in modules:
            for name, value in getattr(module, store).items():
                if value is None or id(value.node.data) in seen:
                    continue
                seen.add(id(value.node.data))
                yield (f"{path}.{name}" if path else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, ag.Tensor]]:
        """``(dotted name, parameter)`` pairs, PyTorch's names; a tied parameter appears once."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[ag.Tensor]:
        """Every parameter (a tied one once), in :meth:`named_parameters` order; pass it to an optimizer.

        >>> from asg import nn
        >>> [tuple(p.shape) for p in nn.Linear(3, 2).parameters()]
        [(2, 3), (2,)]
        """
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, ag.Tensor]]:
        """``(dotted name, buffer)`` pairs (``running_mean`` ...), a shared buffer once."""
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[ag.Tensor]:
        """Every buffer (non-trained state such as BatchNorm's running statistics)."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def _state_items(self) -> Iterator[tuple[str, ag.Tensor]]:
        """Every persistent entry of the state dict, tied entries under each of their names (PyTorch order)."""
        for path, module in self.named_modules():
            dot = f"{path}." if path else ""
            for name, p in module._parameters.items():
                if p is not None:
                    yield dot + name, p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    yield dot + name, b

    # ------------------------------------------------------------------ names and scopes
    def _assign_names(self) -> None:
        """Give every submodule its path and every variable node its dotted name."""
        for path, module in self.named_modules():
            object.__setattr__(module, "_path", path)
        for name, t in [*self._state_items(), *self.named_buffers()]:
            if t.node.name != name:
                t.node.name = name
                t.node.data.name = name

    @property
    def path(self) -> str:
        """The module's dotted path in the model it was last named in (``""`` for the root)."""
        return self._path or ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        depth = _CALL_DEPTH.get()
        if depth == 0 and not self._path:
            self._assign_names()
        token = _CALL_DEPTH.set(depth + 1)
        try:
            with _scope(self.path):
                return self.forward(*args, **kwargs)
        finally:
            _CALL_DEPTH.reset(token)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Build the module's output from its inputs; every subclass defines it.

        Call the module (``model(x)``), not ``forward``: the call adds the module's name scope, so the
        graph's nodes carry its path. It runs once per graph build, on symbolic tensors, not per step.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def add_update(self, variable: ag.Tensor, value: ag.Tensor) -> None:
        """Record ``{variable: value}`` for the step being built (see :func:`capture_updates`)."""
        for collected in _COLLECTORS.get():
            collected[variable] = value

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and its descendants (affects graphs built afterwards)."""
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode): mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def apply(self, fn: Any) -> Module:
        """Call ``fn(module)`` on every descendant and then on this module, as PyTorch does."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ state dict
    def state_dict(self, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and persistent buffer under PyTorch's dotted names.

        >>> from asg import nn
        >>> sd = nn.Linear(3, 2).state_dict()
        >>> {k: v.shape for k, v in sd.items()}
        {'weight': (2, 3), 'bias': (2,)}
        """
        return OrderedDict((prefix + name, np.array(t.numpy(), copy=True)) for name, t in self._state_items())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters and buffers by name.

        With ``strict`` (the default) every key must match: a :class:`StateDictError` lists the missing
        keys, the unexpected keys and the shape mismatches. Non-strict loading skips missing and
        unexpected keys and returns them; a shape mismatch is an error either way (as in PyTorch).
        Arrays may be numpy arrays or anything ``np.asarray`` accepts (torch CPU tensors included).
        """
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        values: list[tuple[ag.Tensor, np.ndarray]] = []
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = _as_array(state_dict[key], key)
            if value.shape != tuple(target.shape):
                mismatched.append(
                    f"{key}: the file has {format_shape(value.shape)}, the model {format_shape(target.shape)}"
                )
            else:
                values.append((target, value))
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(
                f"load_state_dict into {type(self).__name__}: "
                + ". ".join(problems)
                + (". Pass strict=False to load the matching keys only" if strict and not mismatched else "")
            )
        for target, value in values:
            target.assign(value)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        """Extra text inside the module's ``repr`` parentheses (its settings); empty by default."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _as_array(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:
        raise TypeError(f"load_state_dict: {key!r} holds a {type(value).__name__}, not an array") from err


# --------------------------------------------------------------------------- containers
class Sequential(Module):
    """Modules applied in order; children are named ``0``, ``1``, ... (or by an OrderedDict's keys).

    >>> import asg.core as ag
    >>> from asg import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> model(ag.input("x", ("B", 4))).shape, [k for k in model.state_dict()]
    (('B', 2), ['0.weight', '0.bias', '2.weight', '2.bias'])
    """

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Module | Sequential:
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        return items[index][1]

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end, named by its position; returns ``self``."""
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: Any) -> Any:
        """Feeds ``x`` through every child in order and returns the last output."""
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleList(Module):
    """A list of modules, registered as children ``0``, ``1``, ...

    >>> from asg import nn
    >>> layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    >>> len(layers), [k for k in layers.state_dict()][:2]
    (3, ['0.weight', '0.bias'])
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end, named by its position; returns ``self``."""
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append each of ``modules``; returns ``self``."""
        for m in modules:
            self.append(m)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __setitem__(self, index: int, module: Module) -> None:
        key = list(self._modules)[index]
        self.add_module(key, module)


class ModuleDict(Module):
    """A dict of modules, registered as children under their keys.

    >>> from asg import nn
    >>> heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "box": nn.Linear(4, 4)})
    >>> list(heads.keys()), heads["box"].out_features
    (['cls', 'box'], 4)
    """

    def __init__(self, modules: Mapping[str, Module] | None = None) -> None:
        super().__init__()
        for k, m in (modules or {}).items():
            self.add_module(k, m)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> Iterable[str]:
        """The child names, in insertion order."""
        return self._modules.keys()

    def values(self) -> Iterable[Module]:
        """The child modules, in insertion order."""
        return self._modules.values()

    def items(self) -> Iterable[tuple[str, Module]]:
        """``(name, module)`` pairs, in insertion order."""
        return self._modules.items()
