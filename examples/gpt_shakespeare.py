"""Train a tiny character-level GPT on the Shakespeare text bundled with asg-data, then sample from it.

    python examples/gpt_shakespeare.py [--steps 300] [--seed 0]

The whole training step (forward, cross-entropy, gradients, clipping, AdamW) is one compiled ASG graph;
generation uses the model's static-shaped KV cache. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import asg.core as ag
from asg import nn
from asg.data import CharTokenizer, load_shakespeare, random_blocks
from asg.zoo import GPT, GPTConfig, lm_loss


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="ROMEO:\n")
    args = p.parse_args(argv)

    text = load_shakespeare()
    tok = CharTokenizer.fit(text)
    ids = np.asarray(tok.encode(text), np.int64)
    nn.init.manual_seed(args.seed)
    config = GPTConfig(block_size=args.block_size, vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_embd=64)
    model = GPT(config)
    opt = nn.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    T = args.block_size
    inputs = [ag.input("idx", ("B", T), "int64"), ag.input("targets", ("B", T), "int64")]
    step = nn.compile_train_step(model, lm_loss, opt, inputs, clip_grad_norm=1.0)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        loss = step(*random_blocks(ids, T, args.batch_size, rng=rng))
        if i % max(args.steps // 10, 1) == 0:
            print(f"step {i}/{args.steps}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    out = model.generate(np.array([tok.encode(args.prompt)]), 300, temperature=0.8, top_k=20, seed=args.seed)
    sample = tok.decode(out[0].tolist())
    print(f"final loss {loss:.4f}\n--- sample ---\n{sample}")
    return sample


if __name__ == "__main__":
    main()
