"""Tutorial 3: text classification with a small transformer encoder: which play is a passage from?

The labelled set is built from the Shakespeare bundled with asg-data (public domain, Project Gutenberg):
passages of Hamlet (label 0) and Macbeth (label 1), tokenized with asg-data's byte-level BPE tokenizer
trained on the training passages only.
"""

import numpy as np

from asg import nn
from asg.data import SHAKESPEARE_PLAYS, ByteLevelBPETokenizer, load_shakespeare, train_test_split
from asg.zoo import TransformerConfig, TransformerEncoderModel

T = 48  # tokens per passage

text = load_shakespeare()
starts = [text.index(title.upper()) for title in SHAKESPEARE_PLAYS]  # the plays, in order
plays = {
    title: text[a:b] for title, a, b in zip(SHAKESPEARE_PLAYS, starts, [*starts[1:], len(text)], strict=True)
}
passages, labels = [], []
for label, title in enumerate(["Hamlet", "Macbeth"]):
    body = plays[title][5000:]  # skip the list of persons
    chunks = [body[i : i + 200] for i in range(0, 200 * 200, 200)]
    passages += chunks
    labels += [label] * len(chunks)
labels = np.array(labels, np.int64)
train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, seed=0, stratify=labels)
print(f"{len(train_idx)} training and {len(test_idx)} test passages of 200 characters")

tok = ByteLevelBPETokenizer.train("".join(passages[i] for i in train_idx), vocab_size=320)
print("vocabulary", tok.vocab_size, "| 'Enter the ghost' ->", tok.encode("Enter the ghost"))


def encode(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(indices), T), np.int64)
    pad = np.ones((len(indices), T), bool)  # True marks padding
    for row, i in enumerate(indices):
        piece = tok.encode(passages[i])[:T]
        ids[row, : len(piece)] = piece
        pad[row, : len(piece)] = False
    return ids, pad


(ids_train, pad_train), (ids_test, pad_test) = encode(train_idx), encode(test_idx)
y_train, y_test = labels[train_idx], labels[test_idx]

nn.init.manual_seed(0)
config = TransformerConfig(
    vocab_size=tok.vocab_size, d_model=32, nhead=2, num_encoder_layers=1, dim_feedforward=64, dropout=0.0,
    max_len=T, num_classes=2,
)  # fmt: skip
model = TransformerEncoderModel(config)
opt = nn.optim.AdamW(model.parameters(), lr=3e-3)
# A batch is (inputs..., target): fit calls model(ids, pad) and the loss on (logits, target).
batches = [
    (ids_train[i : i + 32], pad_train[i : i + 32], y_train[i : i + 32]) for i in range(0, len(y_train), 32)
]
accuracy = {"acc": lambda y, logits: float((np.asarray(logits).argmax(-1) == y).mean())}
history = nn.fit(
    model, nn.CrossEntropyLoss(), opt, batches, epochs=3, val_batches=[(ids_test, pad_test, y_test)],
    metrics=accuracy, progress=False,
)  # fmt: skip
for epoch, (loss, acc) in enumerate(zip(history["loss"], history["val_acc"], strict=True), 1):
    print(f"epoch {epoch}: loss {loss:.3f}  test accuracy {acc:.3f}")
