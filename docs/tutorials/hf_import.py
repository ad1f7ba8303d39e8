"""Tutorial 5: Hugging Face weights from local files: all-MiniLM-L6-v2 sentence embeddings.

Runs examples/sentence_embeddings.py (shown on the page). The model folder comes from
`bash scripts/fetch_test_data.sh` (.data/all-minilm-l6-v2); without it the tutorial says so and stops.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / ".data" / "all-minilm-l6-v2"
sys.path.insert(0, str(ROOT / "examples"))

if not (MODEL / "model.safetensors").exists():
    print(f"skipped: {MODEL} is absent (bash scripts/fetch_test_data.sh fetches it)")
    sys.exit(0)

import sentence_embeddings  # noqa: E402

sentence_embeddings.main(["--model-dir", str(MODEL)])
