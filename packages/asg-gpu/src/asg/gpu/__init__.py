"""asg.gpu: the wgpu/WGSL backend of asg-core (``compile(..., backend="wgpu")``).

Importing this package does not import wgpu; the backend module (loaded through the ``asg.backends``
entry point when a function is compiled for ``"wgpu"``) does.
"""

__version__ = "0.1.0"
