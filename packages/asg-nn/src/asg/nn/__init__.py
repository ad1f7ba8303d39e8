"""asg.nn — modules, layers, attention, losses, optimizers and a training loop, with PyTorch's names.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg import nn
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> y = model(ag.input("x", ("B", 4)))
    >>> y.shape, list(model.state_dict())[:2]
    (('B', 3), ['0.weight', '0.bias'])
"""

from . import amp, functional, init, lr_scheduler, optim, parallel
from .attention import *  # noqa: F403
from .attention import __all__ as _attention_all
from .checkpointing import Checkpoint, checkpoint
from .layers import *  # noqa: F403
from .layers import __all__ as _layers_all
from .losses import *  # noqa: F403
from .losses import __all__ as _losses_all
from .module import *  # noqa: F403
from .module import __all__ as _module_all
from .optim import clip_grad_norm, clip_grad_value
from .positional import *  # noqa: F403
from .positional import __all__ as _positional_all
from .recurrent import *  # noqa: F403
from .recurrent import __all__ as _recurrent_all
from .serialization import *  # noqa: F403
from .serialization import __all__ as _serialization_all
from .train import *  # noqa: F403
from .train import __all__ as _train_all

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "amp",
    "checkpoint",
    "clip_grad_norm",
    "clip_grad_value",
    "functional",
    "init",
    "lr_scheduler",
    "optim",
    "parallel",
    *_attention_all,
    *_layers_all,
    *_losses_all,
    *_module_all,
    *_positional_all,
    *_recurrent_all,
    *_serialization_all,
    *_train_all,
]
