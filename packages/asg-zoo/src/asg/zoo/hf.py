"""Import Hugging Face checkpoints from local files: GPT-2, BERT and ViT.

A source is a directory holding ``config.json`` and ``model.safetensors`` (as ``save_pretrained``
writes it), a hub cache entry ``models--org--name`` (its ``refs/main`` snapshot, or the only one), or a
model id ``org/name`` looked up in the hub cache (``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
``~/.cache/huggingface/hub``). Nothing is downloaded. Each loader renames the file's tensors to the zoo
model's names with a table, transposes GPT-2's ``Conv1D`` weights by name, checks every shape, and
raises :class:`WeightImportError` listing the missing and unexpected names.

>>> import json, pathlib, tempfile
>>> import numpy as np
>>> from asg import nn
>>> from asg.zoo import GPT, GPTConfig
>>> from asg.zoo.hf import load_gpt2
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> ours = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=4))
>>> sd = {
...     k: v.T if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v
...     for k, v in ours.state_dict().items()
...     if k != "lm_head.weight"
... }
>>> nn.save_state_dict(sd, d / "model.safetensors")
>>> _ = (d / "config.json").write_text(
...     json.dumps(
...         {"model_type": "gpt2", "n_positions": 8, "vocab_size": 10, "n_layer": 1, "n_head": 2, "n_embd": 4}
...     )
... )
>>> twin = load_gpt2(d)
>>> bool(
...     np.array_equal(
...         twin.state_dict()["transformer.h.0.attn.c_attn.weight"],
...         ours.state_dict()["transformer.h.0.attn.c_attn.weight"],
...     )
... )
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from asg import nn

from .bert import BertConfig, BertModel
from .cnn import ResNet, ResNetConfig
from .gpt import GPT, GPTConfig
from .vit import ViT, ViTConfig

__all__ = [
    "WeightImportError",
    "convert_torch_checkpoint",
    "load_bert",
    "load_gpt2",
    "load_resnet",
    "load_vit",
    "load_weights",
    "read_config",
    "resolve_pretrained",
]

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class WeightImportError(KeyError, ValueError):
    """The file's tensors do not map onto the model: lists missing, unexpected and mis-shaped names."""

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------- finding files
def _cache_roots(cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    roots = []
    if cache_dir is not None:
        roots.append(Path(cache_dir).expanduser())
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]) / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    return roots


def _snapshot(entry: Path) -> Path:
    """The snapshot of a hub cache entry ``models--org--name``: ``refs/main``'s, or the only one."""
    ref = entry / "refs" / "main"
    if ref.is_file():
        snap = entry / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = (
        sorted(p for p in (entry / "snapshots").glob("*") if p.is_dir())
        if (entry / "snapshots").is_dir()
        else []
    )
    if len(snaps) == 1:
        return snaps[0]
    if not snaps:
        raise FileNotFoundError(f"{entry}: a hub cache entry with no snapshots/<revision>/ folder")
    raise FileNotFoundError(
        f"{entry}: {len(snaps)} snapshots ({', '.join(p.name for p in snaps)}) and no refs/main; pass the "
        "snapshot folder itself"
    )


def resolve_pretrained(
    source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The local folder holding ``config.json`` for ``source`` (a folder, a hub cache entry or ``org/name``).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> snap = root / "models--openai--gpt2" / "snapshots" / "abc123"
    >>> snap.mkdir(parents=True)
    >>> _ = (snap / "config.json").write_text("{}")
    >>> resolve_pretrained("openai/gpt2", cache_dir=root) == snap
    True
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if (path / "snapshots").is_dir():
            return _snapshot(path)
        raise FileNotFoundError(
            f"{path}: no config.json (expected a save_pretrained folder or a hub cache entry)"
        )
    name = os.fspath(source)
    # a hub id is "org/name"; "./x", ".data/x", "~/x" and "/x" are folders
    if name.count("/") == 1 and not path.exists() and not name.startswith((".", "~", "/")):
        entry_name = "models--" + name.replace("/", "--")
        searched = []
        for root in _cache_roots(cache_dir):
            entry = root / entry_name
            searched.append(str(root))
            if entry.is_dir():
                return _snapshot(entry)
        raise FileNotFoundError(
            f"{name}: not in the Hugging Face hub cache (looked for {entry_name} in {', '.join(searched)}); "
            "nothing is downloaded: copy the model folder here and pass its path"
        )
    raise FileNotFoundError(f"{name}: no such folder")


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a resolved folder, as a dict; errors name the file."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing (every Hugging Face model folder has a config.json)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_weights(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of ``model.safetensors`` (or the shards listed in ``model.safetensors.index.json``)."""
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return nn.load_state_dict(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(nn.load_state_dict(folder / shard))
        return out
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    hint = (
        f"; it has {', '.join(pickled)}: convert it first with asg.zoo.hf.convert_torch_checkpoint (needs torch)"
        if pickled
        else ""
    )
    raise FileNotFoundError(f"{folder}: no model.safetensors{hint}")


# --------------------------------------------------------------------------- checked renaming
def _strip(key: str, prefixes: Iterable[str]) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p) :]
    return key


def load_mapped(
    model: nn.Module,
    weights: Mapping[str, np.ndarray],
    rename: Callable[[str], str | None],
    transpose: Iterable[str] = (),
    source: str = "the file",
) -> nn.Module:
    """Load ``weights`` into ``model`` after ``rename`` (None drops a known-unused tensor), transposing the
    renamed keys ending in one of ``transpose``; every parameter must be covered, every shape must match."""
    own = model.state_dict()
    tied = _tied_aliases(model)
    mapped: dict[str, np.ndarray] = {}
    stored: dict[str, tuple[str, tuple[int, ...]]] = {}  # our name -> the file's name and shape
    unexpected: list[str] = []
    for key, value in weights.items():
        name = rename(key)
        if name is None:
            continue
        if name not in own:
            unexpected.append(key)
            continue
        value = np.asarray(value)
        stored[name] = (key, tuple(value.shape))
        if name.endswith(tuple(transpose)):
            value = value.T
        mapped[name] = value
    for alias, target in tied.items():
        if alias not in mapped and target in mapped:
            mapped[alias] = mapped[target]
    missing = [k for k in own if k not in mapped]
    bad = [
        f"{stored[k][0]}: the file has {stored[k][1]}, the model {tuple(own[k].shape)}"
        + (" (stored transposed)" if k.endswith(tuple(transpose)) else "")
        for k, v in mapped.items()
        if k in stored and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing (the model has them, {source} does not): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected (in {source}, not in the model): {', '.join(unexpected)}")
    if bad:
        problems.append(f"shape mismatches: {'; '.join(bad)}")
    if problems:
        raise WeightImportError(
            f"importing {source} into {type(model).__name__}: "
            + ". ".join(problems)
            + ". Check that config.json "
            "belongs to these weights"
        )
    model.load_state_dict(mapped)
    return model


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: first name}`` for state-dict entries that share one variable (tied embeddings)."""
    first: dict[int, str] = {}
    aliases = {}
    for path, module in model.named_modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            full = f"{path}.{name}" if path else name
            key = id(p.node.data)
            if key in first:
                aliases[full] = first[key]
            else:
                first[key] = full
    return aliases


# --------------------------------------------------------------------------- models
def _check_type(config: dict[str, Any], expected: tuple[str, ...], folder: Path) -> None:
    kind = config.get("model_type")
    if kind is not None and kind not in expected:
        raise ValueError(
            f"{folder / 'config.json'}: model_type is {kind!r}, expected {' or '.join(expected)}"
        )


def load_gpt2(source: str | os.PathLike[str], cache_dir: str | None = None, **overrides: Any) -> GPT:
    """A :class:`~asg.zoo.GPT` with the weights of a Hugging Face GPT-2 (``GPT2LMHeadModel`` or ``GPT2Model``).

    ``overrides`` replace :class:`~asg.zoo.GPTConfig` fields (e.g. ``dropout=0.1`` for fine-tuning).
    """
    folder = resolve_pretrained(source, cache_dir)
    cfg = read_config(folder)
    _check_type(cfg, ("gpt2",), folder)
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"{folder / 'config.json'}: activation_function {act!r}; the zoo GPT uses GELU-tanh (gelu_new)"
        )
    config = GPTConfig(
        block_size=cfg.get("n_positions", 1024), vocab_size=cfg.get("vocab_size", 50257),
        n_layer=cfg.get("n_layer", 12), n_head=cfg.get("n_head", 12), n_embd=cfg.get("n_embd", 768),
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5), dropout=0.0,
    )  # fmt: skip
    for k, v in overrides.items():
        setattr(config, k, v)
    model = GPT(config)

    def rename(key: str) -> str | None:
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # the causal-mask buffers of old checkpoints
            return None
        if key.startswith("lm_head."):
            return key
        return "transformer." + _strip(key, ("transformer.",))

    return load_mapped(model, load_weights(folder), rename, GPT2_CONV1D, f"{folder}/model.safetensors")


def load_bert(source: str | os.PathLike[str], cache_dir: str | None = None, **overrides: Any) -> BertModel:
    """A :class:`~asg.zoo.BertModel` with the weights of a Hugging Face BERT (``BertModel`` names; a ``bert.``
    prefix, as in ``BertForMaskedLM`` files, is stripped and their ``cls.*`` heads are left out)."""
    folder = resolve_pretrained(source, cache_dir)
    cfg = read_config(folder)
    _check_type(cfg, ("bert",), folder)
    weights = load_weights(folder)
    names = {_strip(k, ("bert.",)) for k in weights}
    config = BertConfig.from_dict({**cfg, "add_pooling_layer": "pooler.dense.weight" in names, **overrides})
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{folder / 'config.json'}: only absolute position embeddings are supported")

    def rename(key: str) -> str | None:
        key = _strip(key, ("bert.",))
        if key == "embeddings.position_ids" or key.startswith("cls."):
            return None
        return key

    return load_mapped(BertModel(config), weights, rename, (), f"{folder}/model.safetensors")


def load_vit(source: str | os.PathLike[str], cache_dir: str | None = None, **overrides: Any) -> ViT:
    """A :class:`~asg.zoo.ViT` with the weights of a Hugging Face ``ViTModel`` or ``ViTForImageClassification``."""
    folder = resolve_pretrained(source, cache_dir)
    cfg = read_config(folder)
    _check_type(cfg, ("vit",), folder)
    weights = load_weights(folder)
    names = {_strip(k, ("vit.",)) for k in weights}
    labels = weights["classifier.weight"].shape[0] if "classifier.weight" in weights else 0
    config = ViTConfig.from_dict(
        {**cfg, "num_labels": labels, "add_pooling_layer": "pooler.dense.weight" in names, **overrides}
    )
    return load_mapped(
        ViT(config), weights, lambda k: _strip(k, ("vit.",)), (), f"{folder}/model.safetensors"
    )


_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _resnet_table(config: ResNetConfig) -> dict[str, str]:
    """HF ``ResNetModel`` names -> the zoo's torchvision names, for every conv and batch norm."""
    table = {"embedder.embedder.convolution.weight": "conv1.weight"}
    table.update({f"embedder.embedder.normalization.{b}": f"bn1.{b}" for b in _BN})
    convs = 2 if config.block == "basic" else 3
    for i, depth in enumerate(config.layers):
        for j in range(depth):
            hf, ours = f"encoder.stages.{i}.layers.{j}", f"layer{i + 1}.{j}"
            for k in range(convs):
                table[f"{hf}.layer.{k}.convolution.weight"] = f"{ours}.conv{k + 1}.weight"
                table.update({f"{hf}.layer.{k}.normalization.{b}": f"{ours}.bn{k + 1}.{b}" for b in _BN})
            table[f"{hf}.shortcut.convolution.weight"] = f"{ours}.downsample.0.weight"
            table.update({f"{hf}.shortcut.normalization.{b}": f"{ours}.downsample.1.{b}" for b in _BN})
    table["classifier.1.weight"], table["classifier.1.bias"] = "fc.weight", "fc.bias"
    return table


def load_resnet(source: str | os.PathLike[str], cache_dir: str | None = None) -> ResNet:
    """A :class:`~asg.zoo.ResNet` with the weights of a Hugging Face ``ResNetModel`` or
    ``ResNetForImageClassification`` (Microsoft's ResNet v1.5 layout; without a classifier ``fc`` keeps its
    initial values and is not part of the check)."""
    folder = resolve_pretrained(source, cache_dir)
    cfg = read_config(folder)
    _check_type(cfg, ("resnet",), folder)
    block = {"basic": "basic", "bottleneck": "bottleneck"}.get(cfg.get("layer_type", "bottleneck"))
    if block is None:
        raise ValueError(
            f"{folder / 'config.json'}: layer_type must be 'basic' or 'bottleneck', got {cfg.get('layer_type')!r}"
        )
    width = int(cfg.get("embedding_size", 64))
    expansion = 1 if block == "basic" else 4
    sizes = list(cfg.get("hidden_sizes", [256, 512, 1024, 2048]))
    if sizes != [width * expansion * 2**i for i in range(4)] or cfg.get("downsample_in_first_stage", False):
        raise ValueError(
            f"{folder / 'config.json'}: hidden_sizes={sizes} with embedding_size={width} is not a torchvision-shaped "
            f"{block} ResNet (expected {[width * expansion * 2**i for i in range(4)]}, downsample_in_first_stage false)"
        )
    if cfg.get("downsample_in_bottleneck", False):
        raise ValueError(
            f"{folder / 'config.json'}: downsample_in_bottleneck=true (ResNet v1) is not supported"
        )
    weights = load_weights(folder)
    labels = weights["classifier.1.weight"].shape[0] if "classifier.1.weight" in weights else 1000
    config = ResNetConfig(
        block, tuple(cfg.get("depths", [3, 4, 6, 3])), labels, cfg.get("num_channels", 3), width
    )
    model = ResNet(config)
    table = _resnet_table(config)
    if "classifier.1.weight" not in weights:  # a ResNetModel file: no head to load
        weights = {
            **weights,
            "classifier.1.weight": model.fc.weight.numpy(),
            "classifier.1.bias": model.fc.bias.numpy(),
        }
    return load_mapped(
        model, weights, lambda k: table.get(_strip(k, ("resnet.",)), k), (), f"{folder}/model.safetensors"
    )


# --------------------------------------------------------------------------- PyTorch files
def convert_torch_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], key: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Convert a PyTorch ``state_dict`` file (``.pt``/``.bin``, also one saved from CUDA) to safetensors.

    The file is read with ``torch.load(weights_only=True, map_location="cpu")``, which refuses pickled
    code; without torch the conversion is refused (ASG never unpickles anything itself). A checkpoint
    dict holding the weights under ``"state_dict"`` or ``"model"`` (or ``key``) is unwrapped. Returns
    the shapes written.
    """
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"convert_torch_checkpoint({os.fspath(src)!r}): reading a PyTorch file needs torch "
            "(`pip install torch`), which loads it with weights_only=True; ASG does not unpickle files itself"
        ) from None
    try:
        obj = torch.load(os.fspath(src), weights_only=True, map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"{os.fspath(src)}: torch.load(weights_only=True) refused or failed ({type(err).__name__}: {err}); "
            "only plain state_dict files of tensors can be converted"
        ) from None
    for k in [key] if key else ["state_dict", "model"]:
        if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping):
            obj = obj[k]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{os.fspath(src)}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
        )
    arrays = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{os.fspath(src)}: entry {name!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        arrays[name] = (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().copy()
    nn.save_state_dict(arrays, dst, {"format": "pt", "converted_from": Path(src).name})
    return {k: tuple(v.shape) for k, v in arrays.items()}
