import os
import tempfile

import pytest

# Mesa prints "XDG_RUNTIME_DIR is invalid" at adapter enumeration without it (harmless, but noisy).
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))

from asg.gpu.device import adapter_available

if not adapter_available():
    pytest.skip("no wgpu adapter: install mesa-vulkan-drivers", allow_module_level=True)
