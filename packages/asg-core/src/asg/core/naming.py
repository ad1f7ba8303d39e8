"""Names of values: name scopes (the module path a node was built under) and printable, unique names.

A name scope records where in a model a node was built: ``with scope("h.0.attn"):`` gives every node
built inside ``node.meta["scope"] == "h.0.attn"``. asg-nn wraps each module call in the module's path,
and the graph viewer groups nodes by it. The current scope lives in a :class:`contextvars.ContextVar`,
so threads and asyncio tasks building graphs at once each see their own.

:class:`Namespace` hands out the names a graph printout uses (torch.fx's ``_Namespace``): a user
name is sanitised to an identifier (``h.0.attn.c_attn.weight`` prints as ``h_0_attn_c_attn_weight``)
and made unique with a numeric suffix (``w``, ``w_1``).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SCOPE: ContextVar[str] = ContextVar("asg_scope", default="")
_GRAD_OF: ContextVar[int | None] = ContextVar("asg_grad_of", default=None)


@contextmanager
def scope(name: str) -> Iterator[str]:
    """Record ``name`` as the scope of every node built inside the ``with`` block; yields the full scope.

    Nested scopes join with ``"."``. An empty name adds no level (a model's root module has path ``""``).

    >>> import asg.core as ag
    >>> x = ag.input("x", (2, 3))
    >>> with ag.scope("h"), ag.scope("0.attn") as path:
    ...     y = x * 2.0
    >>> path, y.node.meta["scope"], ag.current_scope()
    ('h.0.attn', 'h.0.attn', None)
    """
    if not isinstance(name, str):
        raise TypeError(f"a scope name must be a str, got {type(name).__name__} {name!r}")
    if name and any(not part for part in name.split(".")):
        raise ValueError(f"scope name {name!r} has an empty component; write dotted paths such as 'h.0.attn'")
    parent = _SCOPE.get()
    full = f"{parent}.{name}" if parent and name else parent or name
    token = _SCOPE.set(full)
    try:
        yield full
    finally:
        _SCOPE.reset(token)


def current_scope() -> str | None:
    """The scope nodes built now are recorded under, or ``None`` outside every :func:`scope`.

    >>> current_scope() is None
    True
    """
    return _SCOPE.get() or None


@contextmanager
def gradient_of(node_id: int, node_scope: str | None) -> Iterator[None]:
    """Mark every node built inside as part of the gradient of forward node ``node_id``.

    Autograd wraps each gradient rule in it: the new nodes get ``meta["grad_of"] = node_id`` and the
    forward node's scope (not the scope ``grad`` was called in), so a viewer groups a module's backward
    nodes with its forward nodes and links each gradient node to the node it differentiates.
    """
    scope_token = _SCOPE.set(node_scope or "")
    grad_token = _GRAD_OF.set(node_id)
    try:
        yield
    finally:
        _GRAD_OF.reset(grad_token)
        _SCOPE.reset(scope_token)


_ILLEGAL = re.compile(r"[^0-9a-zA-Z_]+")
_SUFFIX = re.compile(r"(.*)_(\d+)$")


def sanitize(name: str) -> str:
    """``name`` as a Python identifier: runs of other characters become ``_``, a leading digit gets ``_``.

    >>> sanitize("h.0.attn.c_attn.weight"), sanitize("0"), sanitize("not an identifier")
    ('h_0_attn_c_attn_weight', '_0', 'not_an_identifier')
    """
    text = _ILLEGAL.sub("_", name) or "_unnamed"
    return f"_{text}" if text[0].isdigit() else text


class Namespace:
    """Unique printable names, as torch.fx's ``_Namespace.create_name`` gives them.

    >>> ns = Namespace()
    >>> ns.create_name("w"), ns.create_name("w"), ns.create_name("h.0.w"), ns.create_name("in")
    ('w', 'w_1', 'h_0_w', 'in_1')
    """

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._base_count: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._used

    def reserve(self, name: str) -> None:
        """Mark ``name`` as given out (used for names chosen elsewhere, such as a, b, c...)."""
        self._used.add(name)

    def create_name(self, candidate: str) -> str:
        """A new name like ``candidate``: sanitised, not a keyword, and not given out before."""
        candidate = sanitize(candidate)
        match = _SUFFIX.match(candidate)
        if match is None:
            base, num = candidate, 0
        else:
            base, num = match.group(1), int(match.group(2))
        if not num:
            num = self._base_count.get(base, 0)
        while candidate in self._used or keyword.iskeyword(candidate):
            num += 1
            candidate = f"{base}_{num}"
        self._used.add(candidate)
        self._base_count[base] = num
        return candidate
