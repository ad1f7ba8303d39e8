"""The ``asg-zoo`` command line: ``train``, ``eval``, ``generate`` and ``info``.

    asg-zoo train lenet5 --dataset digits --epochs 15 --out runs/lenet   # ends with "test accuracy: 97.78%"
    asg-zoo train gpt --dataset shakespeare --steps 300 --out runs/gpt    # then prints a generated sample
    asg-zoo eval runs/lenet
    asg-zoo generate runs/gpt --prompt "ROMEO:" --max-new-tokens 200 --top-k 20
    asg-zoo generate gpt --hf path/to/gpt2 --prompt "Hello" --temperature 0   # HF weights, BPE tokenizer
    asg-zoo info resnet18 --dataset cifar10

Datasets: ``digits`` and ``shakespeare`` are bundled with asg-data; ``mnist``, ``fashion-mnist`` and
``cifar10`` are read from local files (``--data-dir``, or the loaders' environment variables; MNIST
also from ``.data/mnist`` as fetched by ``scripts/fetch_test_data.sh``). Each epoch writes
``<out>/ckpt-<epoch>.safetensors`` through asg-nn's CheckpointManager (weights, Adam state, the model config as
JSON); ``--resume`` continues from the latest. ``generate --hf DIR`` runs Hugging Face GPT-2 weights with
the folder's BPE tokenizer files (``vocab.json``, ``merges.txt``; or ``--tokenizer``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import asg.core as ag
import asg.data as data
from asg import nn

from .cnn import LeNet5, LeNetConfig, ResNet, ResNetConfig
from .gpt import GPT, GPTConfig, lm_loss
from .hf import load_gpt2, resolve_pretrained
from .mlp import MLP, MLPConfig
from .vit import ViT, ViTConfig

__all__ = ["MODELS", "build_model", "estimate_flops", "load_dataset", "main", "run"]

IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
TEXT_DATASETS = ("shakespeare",)
MODELS = ("mlp", "lenet5", "resnet18", "resnet34", "resnet50", "vit", "gpt")
CONFIGS = {"mlp": MLPConfig, "lenet5": LeNetConfig, "vit": ViTConfig, "gpt": GPTConfig}
# --lr and --weight-decay when not given: Adam at 3e-3; ViT overfits the small image sets without
# (decoupled) weight decay, so it takes AdamW's
RECIPES: dict[str, dict[str, float]] = {"vit": {"lr": 2e-3, "weight_decay": 0.05}}


# --------------------------------------------------------------------------- data
def _mnist_dir(args_dir: str | None) -> str | None:
    if args_dir or os.environ.get("ASG_MNIST_DIR"):
        return args_dir
    local = Path.cwd() / ".data" / "mnist"
    return str(local) if local.is_dir() else None


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"x_train", "y_train", "x_test", "y_test", "mean", "std"}``: images float32 ``(N, C, H, W)``
    standardised with the training set's ``mean`` and ``std`` (of the pixels in [0, 1]), labels int64."""
    if name == "digits":
        images, labels = data.load_digits(as_float=True)
        x_train, x_test, y_train, y_test = data.train_test_split(
            images[:, None], labels, test_size=0.2, seed=seed, stratify=labels
        )
    elif name in ("mnist", "fashion-mnist"):
        loader = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        root = _mnist_dir(data_dir) if name == "mnist" else data_dir
        x_train, y_train = loader(root, split="train")
        x_test, y_test = loader(root, split="test")
        x_train, x_test = x_train[:, None] / np.float32(255), x_test[:, None] / np.float32(255)
    elif name == "cifar10":
        if data_dir is None:  # load_cifar10 has no default folder
            raise SystemExit(
                "asg-zoo: --dataset cifar10 reads local files: pass --data-dir DIR, the unpacked "
                "cifar-10-batches-bin/ folder (CIFAR-10's binary version) or its parent"
            )
        x_train, y_train = data.load_cifar10(data_dir, split="train")
        x_test, y_test = data.load_cifar10(data_dir, split="test")
        x_train, x_test = x_train / np.float32(255), x_test / np.float32(255)
    else:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    mean, std = float(x_train.mean()), float(x_train.std())
    return {
        "x_train": ((x_train - mean) / std).astype(np.float32),
        "y_train": np.asarray(y_train, np.int64),
        "x_test": ((x_test - mean) / std).astype(np.float32),
        "y_test": np.asarray(y_test, np.int64),
        "mean": np.asarray(mean, np.float32),
        "std": np.asarray(std, np.float32),
    }


# --------------------------------------------------------------------------- models
def default_config(model: str, shape: tuple[int, ...], classes: int, vocab: int = 0) -> Any:
    """The config ``asg-zoo train MODEL`` uses for inputs of ``shape`` ``(C, H, W)``."""
    c, h = shape[0], shape[-1] if shape else 0
    if model == "mlp":
        return MLPConfig(in_features=int(np.prod(shape)), hidden=(256, 128), num_classes=classes)
    if model == "lenet5":
        if h < 16:  # the bundled 8x8 digits: 3x3 kernels, padded second conv, wider channels
            return LeNetConfig(c, h, classes, channels=(16, 32), kernel_size=3, conv2_padding=1)
        return LeNetConfig(c, h, classes)
    if model.startswith("resnet"):
        layers = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}[model]
        block = "bottleneck" if model == "resnet50" else "basic"
        return ResNetConfig(block, layers, classes, in_channels=c, stem="cifar" if h <= 64 else "imagenet")
    if model == "vit":
        patch = 2 if h <= 8 else 4 if h <= 32 else 16
        return ViTConfig(h, patch, c, 64, 4, 4, 128, num_labels=classes)
    if model == "gpt":
        return GPTConfig(block_size=64, vocab_size=vocab, n_layer=2, n_head=4, n_embd=64)
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def build_model(model: str, config: Any) -> nn.Module:
    """The module for ``model`` from its config dataclass."""
    if model == "mlp":
        return MLP(config)
    if model == "lenet5":
        return LeNet5(config)
    if model.startswith("resnet"):
        return ResNet(config)
    if model == "vit":
        return ViT(config)
    if model == "gpt":
        return GPT(config)
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _config_from_json(model: str, values: dict[str, Any]) -> Any:
    cls = ResNetConfig if model.startswith("resnet") else CONFIGS[model]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


def _accuracy(y_true: np.ndarray, logits: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == y_true).mean())


# --------------------------------------------------------------------------- checkpoints
class _EpochCheckpoint(nn.Callback):
    """Save weights, Adam state and everything needed to rebuild the model after each epoch."""

    def __init__(
        self, manager: nn.CheckpointManager, first_epoch: int, info: dict[str, Any], scheduler: Any = None
    ) -> None:
        self.manager, self.first_epoch, self.info, self.scheduler = manager, first_epoch, info, scheduler

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        t = self.trainer
        step = self.first_epoch + epoch + 1
        self.manager.save(step, t.model, t.optimizer, self.scheduler, metrics=logs, **self.info)


def _checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or the latest one of a directory written by ``asg-zoo train``."""
    path = Path(path)
    if path.is_dir():
        entry = nn.CheckpointManager(path).latest()
        if entry is None:
            raise FileNotFoundError(
                f"{path}: no checkpoints (expected {nn.CheckpointManager.INDEX} from asg-zoo train)"
            )
        return path / entry["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    return path


def _read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    meta = nn.read_checkpoint_metadata(path)
    if "model_name" not in meta:
        raise ValueError(
            f"{path}: not a checkpoint written by `asg-zoo train` (no model name in its metadata)"
        )
    return meta


def _check_resume(manager: nn.CheckpointManager, args: argparse.Namespace) -> None:
    """Refuse ``--resume`` from a checkpoint of another model or dataset (it would not load)."""
    path = manager.path(manager.latest())
    meta = nn.read_checkpoint_metadata(path)
    model, dataset = meta.get("model_name", args.model), meta.get("dataset", args.dataset)
    if (model, dataset) != (args.model, args.dataset):
        raise SystemExit(
            f"asg-zoo train {args.model} --dataset {args.dataset} --resume: {path} holds a {model} "
            f"checkpoint on {dataset}; give another --out"
        )


def _restore(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    path = _checkpoint_file(path)
    meta = _read_checkpoint_info(path)
    model = build_model(meta["model_name"], _config_from_json(meta["model_name"], meta["config"]))
    nn.load_checkpoint(path, model)
    return model, meta


# --------------------------------------------------------------------------- commands
def _hyper(args: argparse.Namespace, name: str, default: float) -> float:
    given = getattr(args, name)
    return given if given is not None else RECIPES.get(args.model, {}).get(name, default)


def _image_optimizer(args: argparse.Namespace, model: nn.Module) -> nn.optim.Optimizer:
    """Adam, or AdamW when the run has weight decay."""
    lr, decay = _hyper(args, "lr", 3e-3), _hyper(args, "weight_decay", 0.0)
    if decay:
        return nn.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    return nn.optim.Adam(model.parameters(), lr=lr)


def _describe(opt: nn.optim.Optimizer) -> str:
    """``AdamW lr 0.002 weight decay 0.05``: the optimizer and its initial learning rate."""
    group = opt.param_groups[0]
    decay = f" weight decay {group['weight_decay']:g}" if group.get("weight_decay") else ""
    return f"{type(opt).__name__} lr {group.get('initial_lr', group['lr']):g}{decay}"


def _train_images(args: argparse.Namespace) -> float:
    ds = load_dataset(args.dataset, args.data_dir, args.seed)
    shape, classes = ds["x_train"].shape[1:], int(ds["y_train"].max()) + 1
    config = default_config(args.model, shape, classes)
    nn.init.manual_seed(args.seed)
    model = build_model(args.model, config)
    opt = _image_optimizer(args, model)
    sched = nn.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))  # decays to 0 at the last epoch
    manager = nn.CheckpointManager(args.out, max_to_keep=2)
    start = 0
    if args.resume and manager.latest() is not None:
        _check_resume(manager, args)
        start = int(manager.restore(model, opt)["step"])
        # this run's schedule at epoch `start` (not the saved one): the learning rates of an uninterrupted
        # run of --epochs, whatever --epochs the first part was given
        sched.last_epoch = start - 1
        sched.step()
        print(f"resumed from {manager.path(manager.latest())} after epoch {start}")
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    print(
        f"{args.model} on {args.dataset}: {len(ds['y_train'])} training and {len(ds['y_test'])} test images "
        f"{tuple(shape)}, {classes} classes, {n_params:,} parameters, {_describe(opt)}, backend {args.backend}"
    )
    loader = data.DataLoader(
        data.InMemoryDataset(ds["x_train"], ds["y_train"]),
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
    )
    loader.set_epoch(start)  # a resumed run continues the shuffle order of an uninterrupted one
    test_batches = [
        (ds["x_test"][i : i + 500], ds["y_test"][i : i + 500]) for i in range(0, len(ds["y_test"]), 500)
    ]
    info = {"model_name": args.model, "config": dataclasses.asdict(config), "dataset": args.dataset,
            # export puts this standardisation in front of the model, so its files take pixels in [0, 1]
            "input_normalization": {"mean": float(ds["mean"]), "std": float(ds["std"])}}  # fmt: skip
    began = time.perf_counter()
    epochs = max(args.epochs - start, 0)
    if epochs:
        nn.fit(
            model, nn.CrossEntropyLoss(), opt, loader, epochs=epochs, val_batches=test_batches,
            metrics={"acc": _accuracy}, callbacks=[nn.LRSchedulerCallback(sched), _EpochCheckpoint(manager, start, info, sched), _EpochLine(start, args.epochs)],
            progress=args.progress, backend=args.backend,
        )  # fmt: skip
    seconds = time.perf_counter() - began
    acc = _evaluate_images(model, ds["x_test"], ds["y_test"], args.backend)
    print(
        f"trained {epochs} epochs in {seconds:.1f} s ({seconds / max(epochs, 1):.1f} s/epoch); checkpoints in {args.out}"
    )
    print(f"test accuracy: {acc:.2%}")
    return acc


class _EpochLine(nn.Callback):
    """One plain line per epoch (the tqdm bar is only drawn on a terminal)."""

    def __init__(self, start: int, total: int) -> None:
        self.start, self.total, self.t0 = start, total, time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        took = time.perf_counter() - self.t0
        self.t0 = time.perf_counter()
        print(
            f"epoch {self.start + epoch + 1}/{self.total}: loss {logs['loss']:.4f} acc {logs['acc']:.2%} "
            f"| test loss {logs['val_loss']:.4f} acc {logs['val_acc']:.2%} | {took:.1f} s",
            flush=True,
        )


def _evaluate_images(model: nn.Module, x: np.ndarray, y: np.ndarray, backend: str = "numpy") -> float:
    infer = nn.compile_inference(model, inputs=[ag.input("x", ("B", *x.shape[1:]))], backend=backend)
    logits = np.concatenate([infer(x[i : i + 500]) for i in range(0, len(x), 500)])
    return _accuracy(y, logits)


def _shakespeare(seed: int) -> tuple[data.CharTokenizer, np.ndarray, np.ndarray]:
    text = data.load_shakespeare()
    tok = data.CharTokenizer.fit(text)
    ids = np.asarray(tok.encode(text), np.int64)
    split = int(len(ids) * 0.9)
    return tok, ids[:split], ids[split:]


def _train_gpt(args: argparse.Namespace) -> float:
    from tqdm.auto import tqdm

    tok, train_ids, test_ids = _shakespeare(args.seed)
    config = GPTConfig(
        block_size=args.block_size, vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
        n_embd=args.n_embd, dropout=0.0,
    )  # fmt: skip
    nn.init.manual_seed(args.seed)
    model = GPT(config)
    opt = nn.optim.AdamW(model.parameters(), lr=_hyper(args, "lr", 3e-3), weight_decay=0.01)
    manager = nn.CheckpointManager(args.out, max_to_keep=2)
    start = 0
    if args.resume and manager.latest() is not None:
        _check_resume(manager, args)
        start = int(manager.restore(model, opt)["step"])
        print(f"resumed from {manager.path(manager.latest())} after step {start}")
    print(
        f"gpt on shakespeare: {len(train_ids):,} training and {len(test_ids):,} test characters, vocabulary "
        f"{tok.vocab_size}, {model.num_params():,} parameters, block {config.block_size}, backend {args.backend}"
    )
    T = config.block_size
    inputs = [ag.input("idx", ("B", T), "int64"), ag.input("targets", ("B", T), "int64")]
    step = nn.compile_train_step(model, lm_loss, opt, inputs, clip_grad_norm=1.0, backend=args.backend)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = tqdm(range(start, args.steps), desc="train", disable=not show, initial=start, total=args.steps)
    began, loss = time.perf_counter(), float("nan")
    for i in bar:
        # each step's batch from (seed, step): a resumed run draws the batches of an uninterrupted one
        x, y = data.random_blocks(train_ids, T, args.batch_size, rng=np.random.default_rng((args.seed, i)))
        loss = step(x, y)
        if show:
            rate = (i + 1 - start) * args.batch_size * T / (time.perf_counter() - began)
            bar.set_postfix(loss=f"{loss:.3f}", tokens_per_s=f"{rate:.0f}")
        if (i + 1) % max(args.steps // 5, 1) == 0 and not show:
            print(f"step {i + 1}/{args.steps}: loss {loss:.4f}", flush=True)
    bar.close()
    seconds = time.perf_counter() - began
    info = {
        "model_name": "gpt",
        "config": dataclasses.asdict(config),
        "dataset": "shakespeare",
        "tokenizer": tok.to_dict(),
    }
    ckpt = manager.save(args.steps, model, opt, metrics={"loss": loss}, **info)
    acc = _gpt_accuracy(model, test_ids, T, args.backend)
    print(f"trained {args.steps - start} steps in {seconds:.1f} s; checkpoint {ckpt}")
    print(f"test accuracy (next character): {acc:.2%}")
    sample = model.generate(
        np.array([tok.encode(args.prompt)]), args.max_new_tokens, temperature=0.8, top_k=20, seed=args.seed
    )
    print("sample:\n" + tok.decode(sample[0].tolist()))
    return acc


def _gpt_accuracy(model: GPT, ids: np.ndarray, T: int, backend: str) -> float:
    infer = nn.compile_inference(model, inputs=[ag.input("idx", ("B", T), "int64")], backend=backend)
    n = (len(ids) - 1) // T
    n = min(n, 256)  # 256 blocks: enough for a stable estimate, fast on a CPU
    x = ids[: n * T].reshape(n, T)
    y = ids[1 : n * T + 1].reshape(n, T)
    correct = sum(int((infer(x[i : i + 32]).argmax(-1) == y[i : i + 32]).sum()) for i in range(0, n, 32))
    return correct / y.size


def cmd_train(args: argparse.Namespace) -> float:
    """``asg-zoo train MODEL --dataset NAME``: train, checkpoint into ``--out``, return the test accuracy.

    Image models train ``--epochs`` epochs (Adam, or AdamW with ``--weight-decay``; cosine learning rate),
    saving a checkpoint after each; ``gpt`` trains ``--steps`` steps on ``shakespeare``, saves one
    checkpoint, reports next-character accuracy and prints a sample. ``--resume`` continues from the
    latest checkpoint in ``--out``. A dataset that does not fit the model exits with a message.
    """
    if args.out is None:  # one folder per model and dataset, so --resume never meets another model's
        args.out = f"runs/{args.model}-{args.dataset}"
    if args.model == "gpt":
        if args.dataset not in TEXT_DATASETS:
            raise SystemExit(f"asg-zoo train gpt: --dataset must be one of {', '.join(TEXT_DATASETS)}")
        return _train_gpt(args)
    if args.dataset not in IMAGE_DATASETS:
        raise SystemExit(f"asg-zoo train {args.model}: --dataset must be one of {', '.join(IMAGE_DATASETS)}")
    return _train_images(args)


def cmd_eval(args: argparse.Namespace) -> float:
    """``asg-zoo eval CHECKPOINT``: rebuild the model of a ``train`` checkpoint (file or folder: its
    latest) and return its test accuracy.

    Image models are scored on the test split of ``--dataset`` (default: the one they trained on); a GPT
    on next-character accuracy over the shakespeare test split.
    """
    model, meta = _restore(args.checkpoint)
    dataset = args.dataset or meta["dataset"]
    if meta["model_name"] == "gpt":
        tok = data.CharTokenizer.from_dict(meta["tokenizer"])
        _, _, test_ids = _shakespeare(0)
        acc = _gpt_accuracy(model, test_ids, model.config.block_size, args.backend)
        del tok
        print(f"test accuracy (next character): {acc:.2%}")
        return acc
    ds = load_dataset(dataset, args.data_dir)
    acc = _evaluate_images(model, ds["x_test"], ds["y_test"], args.backend)
    print(f"{meta['model_name']} on {dataset}: test accuracy: {acc:.2%}")
    return acc


def _bpe_tokenizer(path: str | os.PathLike[str]) -> data.ByteLevelBPETokenizer:
    """A byte-level BPE tokenizer from local files: a folder holding ``vocab.json`` and ``merges.txt``
    (a ``save_pretrained`` GPT-2) or OpenAI's ``encoder.json`` and ``vocab.bpe``, or a JSON file written
    by :meth:`asg.data.ByteLevelBPETokenizer.save`."""
    path = Path(path)
    if path.is_file():
        return data.ByteLevelBPETokenizer.load(path)
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (path / vocab).is_file() and (path / merges).is_file():
            return data.from_gpt2_files(path / vocab, path / merges)
    raise FileNotFoundError(
        f"{path}: no BPE tokenizer (expected vocab.json and merges.txt, as transformers saves GPT-2's, "
        "encoder.json and vocab.bpe, as OpenAI's, or a tokenizer JSON file written by asg-data)"
    )


def _generator(args: argparse.Namespace) -> tuple[GPT, Any]:
    """The GPT and tokenizer ``generate`` runs: a ``train`` checkpoint, or ``--hf`` GPT-2 weights."""
    if args.hf is not None:
        if args.checkpoint not in (None, "gpt"):
            raise SystemExit(
                f"asg-zoo generate --hf: give no checkpoint (or the model name gpt), got {args.checkpoint!r}"
            )
        folder = resolve_pretrained(args.hf)
        model = load_gpt2(folder)
        tok = _bpe_tokenizer(args.tokenizer or folder)
        if tok.vocab_size > model.config.vocab_size:
            raise SystemExit(
                f"asg-zoo generate: the tokenizer of {args.tokenizer or args.hf} has {tok.vocab_size} ids, "
                f"the model in {args.hf} embeds {model.config.vocab_size}"
            )
        return model, tok
    if args.checkpoint is None:
        raise SystemExit("asg-zoo generate: give a checkpoint written by `asg-zoo train gpt`, or --hf DIR")
    if args.tokenizer is not None:
        raise SystemExit("asg-zoo generate: --tokenizer goes with --hf (a checkpoint holds its tokenizer)")
    model, meta = _restore(args.checkpoint)
    if meta["model_name"] != "gpt" or "tokenizer" not in meta:
        raise SystemExit(
            f"asg-zoo generate: {args.checkpoint} holds a {meta['model_name']}, not a character GPT"
        )
    return model, data.CharTokenizer.from_dict(meta["tokenizer"])


def cmd_generate(args: argparse.Namespace) -> str:
    """``asg-zoo generate [CHECKPOINT] [--hf DIR]``: sample ``--max-new-tokens`` tokens after ``--prompt``;
    prints and returns the text (prompt included).

    The model is a ``train gpt`` checkpoint with its character tokenizer, or GPT-2 weights from ``--hf``
    with a BPE tokenizer; ``--temperature``, ``--top-k``, ``--top-p`` and ``--seed`` go to
    :meth:`GPT.generate`, ``--show-ids`` also prints the token ids.
    """
    model, tok = _generator(args)
    out = model.generate(
        np.array([tok.encode(args.prompt)]), args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, backend=args.backend,
    )  # fmt: skip
    text = tok.decode(out[0].tolist())
    print(text)
    if args.show_ids:
        print("ids:", " ".join(str(i) for i in out[0].tolist()))
    return text


# (C, H, W) of each image dataset's examples
IMAGE_SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    """Write a model's inference function as ONNX (``--onnx``) and/or an inference-only bundle (``--bundle``).

    The weights come from ``--weights``: a checkpoint (file or directory) written by ``asg-zoo train``,
    or a safetensors ``state_dict`` file; without it the model keeps its fresh initialisation. The batch
    dimension (and GPT's sequence length) stays symbolic in both files.
    """
    from asg.core.export import save_inference, to_onnx

    if not args.onnx and not args.bundle:
        raise SystemExit("asg-zoo export: give --onnx FILE, --bundle FILE or both")
    if args.onnx and importlib.util.find_spec("onnx") is None:
        raise SystemExit(
            "asg-zoo export --onnx: the onnx package is not installed: `pip install onnx` "
            "(or asg-core[onnx]); --bundle alone needs nothing more"
        )
    weights = Path(args.weights) if args.weights else None
    dataset = args.dataset
    norm = None
    if weights is not None and (weights.is_dir() or _is_train_checkpoint(weights)):
        model, meta = _restore(weights)
        if meta["model_name"] != args.model:
            raise SystemExit(
                f"asg-zoo export {args.model}: {weights} holds a {meta['model_name']} checkpoint"
            )
        dataset = meta.get("dataset", dataset)
        norm = meta.get("input_normalization")
    else:
        if args.model == "gpt":
            config = GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=64)
        else:
            config = default_config(args.model, IMAGE_SHAPES[dataset], 10)
        model = build_model(args.model, config)
        if weights is not None:
            nn.load_model(model, weights)
    model.eval()
    if args.model == "gpt":
        x = ag.input("idx", ("B", "T"), "int64")
    else:
        x = ag.input("x", ("B", *IMAGE_SHAPES[dataset]))
    fn = ag.compile(model((x - norm["mean"]) / norm["std"] if norm else x), inputs=[x])
    if norm:
        print(
            f"input {x.name}: pixels in [0, 1] as the {dataset} loader gives them (standardised inside "
            f"with the training set's mean {norm['mean']:.4f} and std {norm['std']:.4f})"
        )
    result: dict[str, Any] = {"nodes": len(fn.graph.nodes)}
    if args.onnx:
        to_onnx(fn, args.onnx)
        result["onnx"] = args.onnx
        print(f"wrote {args.onnx}: ONNX, {len(fn.graph.nodes)} graph nodes, input {x.name} {x.shape}")
    if args.bundle:
        save_inference(fn, args.bundle)
        result["bundle"] = args.bundle
        print(f"wrote {args.bundle}: inference bundle (load with asg.core.load), input {x.name} {x.shape}")
    return result


def training_graph(name: str, dataset: str = "digits") -> ag.Function:
    """The compiled training step (forward, gradients, Adam update) of zoo model ``name``, for viewers.

    ``asg-viz --zoo gpt`` opens it. Image models take ``dataset``'s input shape with a symbolic batch;
    GPT takes ``(B, 64)`` character ids (the ``asg-zoo train gpt`` configuration).

    >>> fn = training_graph("lenet5")
    >>> fn.inputs[0].shape
    ('B', 1, 8, 8)
    """
    if name == "gpt":
        model = build_model(name, GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=64))
        x, y = ag.input("idx", ("B", 64), "int64"), ag.input("target", ("B", 64), "int64")
        loss_fn = lm_loss
    elif name in MODELS:
        model = build_model(name, default_config(name, IMAGE_SHAPES[dataset], 10))
        x, y = ag.input("x", ("B", *IMAGE_SHAPES[dataset])), ag.input("y", ("B",), "int64")
        loss_fn = nn.CrossEntropyLoss()
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    step = nn.compile_train_step(model, loss_fn, nn.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y])
    assert step.function is not None
    return step.function


def _is_train_checkpoint(path: Path) -> bool:
    try:
        _read_checkpoint_info(path)
    except (ValueError, OSError):
        return False
    return True


def estimate_flops(graph: ag.Graph, batch: int = 1) -> int:
    """Multiply-adds x 2 of the matmuls and convolutions in ``graph`` (symbolic dims counted as ``batch``)."""

    def size(shape: Sequence[Any]) -> int:
        return int(np.prod([d if isinstance(d, int) else batch for d in shape]))

    total = 0
    for node in graph.nodes:
        if node.op in ("matmul", "linear"):
            k = node.inputs[0].shape[-1]
            total += 2 * size(node.shape) * (k if isinstance(k, int) else batch)
        elif node.op == "conv2d":
            w = node.inputs[1].shape
            total += 2 * size(node.shape) * size(w[1:])
    return total


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """``asg-zoo info MODEL``: print a freshly built model's config, parameter count, inference-graph size
    and op counts, and FLOPs per example (:func:`estimate_flops`); ``--graph`` prints the whole graph.

    Returns ``{"parameters", "nodes", "flops"}``. Image models take ``--dataset``'s input shape; GPT the
    ``train gpt`` configuration.
    """
    if args.model == "gpt":
        config = GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=64)
        x = ag.input("idx", ("B", 64), "int64")
    else:
        config = default_config(args.model, IMAGE_SHAPES[args.dataset], 10)
        x = ag.input("x", ("B", *IMAGE_SHAPES[args.dataset]))
    model = build_model(args.model, config)
    model.eval()
    y = model(x)
    fn = ag.compile(y, inputs=[x])
    graph = fn.graph
    params = sum(int(np.prod(p.shape)) for p in model.parameters())
    counts = graph.op_counts()
    flops = estimate_flops(graph, 1)
    print(f"{args.model} ({type(config).__name__}): {dataclasses.asdict(config)}")
    print(f"parameters: {params:,}")
    print(
        f"graph: {len(graph.nodes)} nodes; ops: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    print(f"FLOPs per example (matmul + conv, x2 multiply-adds): {flops:,}")
    if args.graph:
        print(graph)
    return {"parameters": params, "nodes": len(graph.nodes), "flops": flops}


# --------------------------------------------------------------------------- argument parsing
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asg-zoo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--backend", default="numpy", help="numpy (default) or wgpu (needs asg-gpu)")
        s.add_argument(
            "--data-dir", default=None, help="directory of the dataset's files (mnist, cifar10 ...)"
        )

    t = sub.add_parser("train", help="train a model and print its test accuracy")
    t.add_argument("model", choices=MODELS)
    t.add_argument("--dataset", required=True, choices=IMAGE_DATASETS + TEXT_DATASETS)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3; vit 2e-3)")
    t.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="AdamW's decoupled weight decay for image models (default 0: Adam; vit 0.05)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="checkpoint directory (default runs/MODEL-DATASET)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm bar (default: on a terminal)",
    )
    g = t.add_argument_group("gpt")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--block-size", type=int, default=64)
    g.add_argument("--n-layer", type=int, default=2)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=64)
    g.add_argument("--prompt", default="ROMEO:\n")
    g.add_argument("--max-new-tokens", type=int, default=200)
    common(t)

    e = sub.add_parser("eval", help="test accuracy of a checkpoint written by train")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, choices=IMAGE_DATASETS + TEXT_DATASETS)
    common(e)

    gen = sub.add_parser("generate", help="sample text from a GPT checkpoint or Hugging Face GPT-2 weights")
    gen.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint (file or folder) of train gpt")
    gen.add_argument(
        "--hf",
        default=None,
        metavar="DIR",
        help="GPT-2 weights from a save_pretrained folder or hub cache entry",
    )
    gen.add_argument(
        "--tokenizer", default=None, help="BPE tokenizer files for --hf (default: the --hf folder's)"
    )
    gen.add_argument("--show-ids", action="store_true", help="also print the token ids")
    gen.add_argument("--prompt", default="\n")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    common(gen)

    i = sub.add_parser("info", help="parameters, graph size, FLOPs estimate and graph summary of a model")
    i.add_argument("model", choices=MODELS)
    i.add_argument("--dataset", default="digits", choices=IMAGE_DATASETS)
    i.add_argument("--graph", action="store_true", help="print the whole graph")

    x = sub.add_parser("export", help="write a model's inference function as ONNX and/or an inference bundle")
    x.add_argument("model", choices=MODELS)
    x.add_argument(
        "--weights", default=None, help="a checkpoint of `asg-zoo train`, or a safetensors state_dict"
    )
    x.add_argument("--dataset", default="digits", choices=IMAGE_DATASETS, help="input shape (image models)")
    x.add_argument("--onnx", default=None, help="ONNX file to write (needs the onnx package)")
    x.add_argument("--bundle", default=None, help="inference-only function bundle to write (.asg)")
    return p


def run(argv: Sequence[str] | None = None) -> Any:
    """Run one ``asg-zoo`` command and return its result (the test accuracy for train and eval)."""
    args = _parser().parse_args(argv)
    if getattr(args, "backend", "numpy") not in ag.available_backends():
        raise SystemExit(
            f"asg-zoo: backend {args.backend!r} is not installed (available: {', '.join(ag.available_backends())}); "
            "`pip install asg-zoo[gpu]` adds wgpu"
        )
    try:
        return {
            "train": cmd_train,
            "eval": cmd_eval,
            "generate": cmd_generate,
            "info": cmd_info,
            "export": cmd_export,
        }[args.command](args)
    except (data.DatasetNotFoundError, FileNotFoundError) as err:
        raise SystemExit(f"asg-zoo {args.command}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asg-zoo`` console script: exit status 0 on success."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
