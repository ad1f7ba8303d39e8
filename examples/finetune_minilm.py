"""Fine-tune imported pretrained weights: all-MiniLM-L6-v2 (a 6-layer BERT) plus a linear head, trained
end to end on a small sentiment task.

    bash scripts/fetch_test_data.sh
    python examples/finetune_minilm.py [--model-dir .data/all-minilm-l6-v2] [--steps 30]

Every parameter of the imported encoder is trained with AdamW (lr 5e-5, the usual BERT fine-tuning
rate; the head 1e-3) in one compiled training step.
"""

from __future__ import annotations

import argparse

import numpy as np

import asg.core as ag
from asg import nn
from asg.data import WordPieceTokenizer
from asg.zoo import load_bert, mean_pool

POSITIVE = ["I loved this film.", "What a wonderful day!", "The food was delicious.", "Great service, very kind.",
            "An excellent, moving book.", "I am so happy with it.", "Brilliant acting and a clever plot.",
            "The concert was fantastic."]  # fmt: skip
NEGATIVE = ["I hated this film.", "What a terrible day.", "The food was awful.", "Rude staff and slow service.",
            "A boring, pointless book.", "I am very disappointed.", "Dreadful acting and a silly plot.",
            "The concert was a mess."]  # fmt: skip
TEST = [("This was a lovely evening.", 1), ("It was dull and far too long.", 0), ("Superb!", 1),
        ("Awful, just awful.", 0)]  # fmt: skip


class Classifier(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, 2)

    def forward(self, ids: ag.Tensor, mask: ag.Tensor) -> ag.Tensor:
        hidden, _ = self.bert(ids, mask)
        return self.head(mean_pool(hidden, mask))


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=".data/all-minilm-l6-v2")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    nn.init.manual_seed(0)
    tok = WordPieceTokenizer.from_pretrained(args.model_dir)
    model = Classifier(load_bert(args.model_dir, hidden_dropout_prob=0.1))
    opt = nn.optim.AdamW(
        [
            {"params": list(model.bert.parameters()), "lr": 5e-5},
            {"params": list(model.head.parameters()), "lr": 1e-3},
        ]
    )
    texts, labels = POSITIVE + NEGATIVE, np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    batch = tok(texts)
    spec = [
        ag.input("ids", ("B", "T"), "int64"),
        ag.input("mask", ("B", "T"), "int64"),
        ag.input("y", ("B",), "int64"),
    ]
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), opt, spec)
    for i in range(1, args.steps + 1):
        loss = step(batch["input_ids"], batch["attention_mask"], labels)
        if i % 10 == 0:
            print(f"step {i}: loss {loss:.4f}", flush=True)
    test = tok([t for t, _ in TEST])
    logits = nn.compile_inference(model, inputs=spec[:2])(test["input_ids"], test["attention_mask"])
    acc = float((logits.argmax(-1) == np.array([y for _, y in TEST])).mean())
    print(f"final test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
