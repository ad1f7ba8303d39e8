"""asg.data: datasets, samplers, a prefetching DataLoader, transforms, dataset-format readers,
bundled real data, text tokenizers and metrics. numpy is the only hard dependency; importing this
package never imports GPU or viewer code.

>>> import asg.data
>>> asg.data.__version__
'0.1.0'
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__: list[str] = ["__version__"]

# --- data pipeline: datasets, samplers, loader, transforms, formats, bundled data (pipeline owner) ---
# (pipeline imports go here)

# --- text (tokenizers, LM dataset) and metrics (text/metrics owner): append below this line ---
# Add e.g. `from .text import CharTokenizer` and then `__all__ += ["CharTokenizer"]`.
