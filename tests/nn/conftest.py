import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seeded_init():
    """Every test starts from the same initialiser stream, so failures reproduce."""
    from asg import nn

    nn.init.manual_seed(0)
