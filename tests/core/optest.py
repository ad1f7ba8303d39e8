"""Moved to :mod:`asg.core.testing`; this re-export remains for test files not yet switched."""

from asg.core.testing import check_op, rand, run, run_grads, torch_or_skip

__all__ = ["check_op", "rand", "run", "run_grads", "torch_or_skip"]
