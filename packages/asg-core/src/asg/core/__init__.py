"""asg.core — the Abstract Semantic Graph: build a graph, differentiate it, optimise it, run it.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", 3))
    >>> w = ag.parameter(np.ones((3, 2), "float32"), name="w")
    >>> y = (x @ w).relu().sum()
    >>> (gw,) = ag.grad(y, [w])
    >>> f = ag.compile([y, gw])
    >>> value, grad_w = f(np.ones((4, 3), "float32"))
    >>> float(value), grad_w.shape
    (24.0, (3, 2))
"""

from . import dtypes, ops, passes
from .autograd import grad, hvp, value_and_grad
from .backends import Backend, Capabilities, available_backends, get_backend, register_backend
from .bundle import load
from .dtypes import bool_, float16, float32, float64, int32, int64
from .errors import ASGError, DTypeError, ExecutionError, MissingRuleError, NonFiniteError, ShapeError
from .function import Function, compile
from .fusion import FusionGroup, annotate_fusion, find_fusion_groups
from .gradcheck import check_grads, numerical_grad
from .graph import Graph, Node, Variable
from .lowering import LoweringContext
from .naming import current_scope, scope
from .ops import *  # noqa: F403
from .ops import __all__ as _ops_all
from .passes.narrow import UnsupportedDTypeError
from .registry import OPS, Kernel, OpDef, TensorType, define_op, get_op, register_kernel, register_lowering
from .serialize import graph_from_json, graph_to_json
from .tensor import Tensor, apply, as_tensor, constant, input, parameter, state
from .threads import get_num_threads, set_num_threads
from .verify import verify

__version__ = "0.2.0"

__all__ = [
    "OPS",
    "ASGError",
    "Backend",
    "Capabilities",
    "DTypeError",
    "ExecutionError",
    "Function",
    "FusionGroup",
    "Kernel",
    "LoweringContext",
    "Graph",
    "MissingRuleError",
    "Node",
    "NonFiniteError",
    "OpDef",
    "ShapeError",
    "Tensor",
    "TensorType",
    "UnsupportedDTypeError",
    "Variable",
    "annotate_fusion",
    "apply",
    "as_tensor",
    "available_backends",
    "bool_",
    "check_grads",
    "compile",
    "constant",
    "current_scope",
    "define_op",
    "dtypes",
    "find_fusion_groups",
    "float16",
    "float32",
    "float64",
    "get_backend",
    "get_num_threads",
    "get_op",
    "grad",
    "graph_from_json",
    "graph_to_json",
    "hvp",
    "input",
    "int32",
    "int64",
    "load",
    "numerical_grad",
    "ops",
    "parameter",
    "passes",
    "register_backend",
    "register_kernel",
    "register_lowering",
    "scope",
    "set_num_threads",
    "state",
    "value_and_grad",
    "verify",
    *_ops_all,
]
