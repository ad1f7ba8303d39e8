"""Tutorial 4: a character-level GPT on the bundled Shakespeare, then generation.

Runs examples/gpt_shakespeare.py (shown on the page) on small settings: 20 steps of batch 8, blocks of 32.
The example's defaults (300 steps of batch 32, blocks of 64) take a few minutes and give recognisable text.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import gpt_shakespeare

gpt_shakespeare.main(["--steps", "20", "--batch-size", "8", "--block-size", "32"])
