"""Sentence embeddings with the real all-MiniLM-L6-v2 weights, and a nearest-neighbour search.

    bash scripts/fetch_test_data.sh      # puts the model files into .data/all-minilm-l6-v2
    python examples/sentence_embeddings.py [--model-dir .data/all-minilm-l6-v2]

The model folder is read offline: WordPiece tokenizer (asg-data), BERT encoder (asg-zoo, weights from
model.safetensors), mean pooling and L2 normalisation, as sentence-transformers computes them.
"""

from __future__ import annotations

import argparse

import numpy as np

from asg.zoo import SentenceEncoder

CORPUS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "A woman is playing the violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "The stock market fell sharply today.",
]
QUERIES = ["Someone is having a meal.", "Music is being played.", "Shares dropped."]


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=".data/all-minilm-l6-v2")
    args = p.parse_args(argv)
    encoder = SentenceEncoder.from_pretrained(args.model_dir)
    corpus = encoder.encode(CORPUS)
    best = []
    for query, q in zip(QUERIES, encoder.encode(QUERIES), strict=True):
        scores = corpus @ q  # cosine similarities: the embeddings have unit length
        i = int(np.argmax(scores))
        best.append(CORPUS[i])
        print(f"{query!r} -> {CORPUS[i]!r} (cosine {scores[i]:.3f})")
    return best


if __name__ == "__main__":
    main()
