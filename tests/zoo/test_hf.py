"""Hugging Face import: tiny random-initialised transformers models saved with save_pretrained give the
same logits and hidden states in ASG (float32, max abs error ~1e-4); the hub cache layout; mapping errors;
the PyTorch checkpoint converter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import asg.core as ag
from asg import nn
from asg.zoo import mean_pool
from asg.zoo.hf import (
    WeightImportError,
    convert_torch_checkpoint,
    load_bert,
    load_gpt2,
    load_vit,
    resolve_pretrained,
)

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RNG = np.random.default_rng(0)
ATOL = 1e-4


def _save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97,
        n_positions=24,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    return _save(model, tmp_path_factory.mktemp("gpt2")), model


def test_gpt2_logits_and_greedy_generation_match_transformers(gpt2_dir):
    path, ref = gpt2_dir
    ours = load_gpt2(path)
    assert ours.lm_head.weight is ours.transformer["wte"].weight  # tied on import as in the file
    ids = RNG.integers(0, 97, (2, 11))
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = nn.compile_inference(ours, inputs=[ag.input("idx", ("B", "T"), "int64")])(ids)
    assert np.abs(got - want).max() < ATOL
    with torch.no_grad():
        want_ids = ref.generate(
            torch.from_numpy(ids[:1, :5]), max_new_tokens=12, do_sample=False, pad_token_id=0
        ).numpy()
    np.testing.assert_array_equal(ours.generate(ids[:1, :5], 12, temperature=0.0), want_ids)


def test_gpt2_from_hub_cache_layout(gpt2_dir, tmp_path):
    path, _ = gpt2_dir
    entry = tmp_path / "hub" / "models--tiny--gpt2"
    snap = entry / "snapshots" / "0123abcd"
    shutil.copytree(path, snap)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123abcd\n")
    (entry / "snapshots" / "older").mkdir()  # refs/main decides between snapshots
    assert resolve_pretrained("tiny/gpt2", cache_dir=tmp_path / "hub") == snap
    assert resolve_pretrained(entry) == snap
    a = load_gpt2("tiny/gpt2", cache_dir=tmp_path / "hub").state_dict()
    b = load_gpt2(path).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in b)
    with pytest.raises(FileNotFoundError, match=r"models--tiny--bert in .*nothing is downloaded"):
        resolve_pretrained("tiny/bert", cache_dir=tmp_path / "hub")


def test_pretrained_paths_expand_the_home_folder_and_a_dotted_folder_is_not_a_hub_id(
    gpt2_dir, tmp_path, monkeypatch
):
    path, _ = gpt2_dir
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    snap = tmp_path / "hf" / "models--tiny--gpt2" / "snapshots" / "abc"
    shutil.copytree(path, snap)
    shutil.copytree(path, tmp_path / "gpt2")
    assert resolve_pretrained("tiny/gpt2", cache_dir="~/hf") == snap  # as the README writes cache_dir
    assert resolve_pretrained("~/gpt2") == tmp_path / "gpt2"
    with pytest.raises(FileNotFoundError, match=r"^\.data/minilm: no such folder$"):
        resolve_pretrained(".data/minilm")  # was "not in the Hugging Face hub cache (models--.data--minilm)"


def test_mapping_errors_list_missing_and_unexpected_names(gpt2_dir, tmp_path):
    path, _ = gpt2_dir
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    weights = nn.load_state_dict(bad / "model.safetensors")
    weights["transformer.h.0.attn.extra.weight"] = np.zeros(3, np.float32)
    del weights["transformer.h.1.mlp.c_fc.bias"]
    nn.save_state_dict(weights, bad / "model.safetensors")
    with pytest.raises(WeightImportError) as err:
        load_gpt2(bad)
    msg = str(err.value)
    assert "missing (the model has them" in msg and "transformer.h.1.mlp.c_fc.bias" in msg
    assert "unexpected (in " in msg and "transformer.h.0.attn.extra.weight" in msg
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_embd"] = 16
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightImportError) as err:
        load_gpt2(bad)
    msg = str(err.value)
    assert (
        "shape mismatches: " in msg
        and "transformer.wte.weight: the file has (97, 32), the model (97, 16)" in msg
    )
    assert (
        "transformer.h.0.attn.c_attn.weight: the file has (32, 96), the model (48, 16) (stored transposed)"
        in msg
    )


def _tiny_bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw,
    )  # fmt: skip


def test_bert_hidden_states_pooler_and_sentence_embeddings_match(tmp_path):
    torch.manual_seed(1)
    ref = transformers.BertModel(_tiny_bert_config()).eval()
    path = _save(ref, tmp_path / "bert")
    ours = load_bert(path)
    ids = RNG.integers(1, 120, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    with torch.no_grad():
        out = ref(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    i, m, t = (ag.input(n, ("B", "T"), "int64") for n in ("ids", "mask", "types"))
    h, pooled = ours(i, m, t)
    got_h, got_p, got_e = ag.compile([h, pooled, mean_pool(h, m)], inputs=[i, m, t])(ids, mask, types)
    want_h = out.last_hidden_state.numpy()
    assert np.abs(got_h - want_h).max() < ATOL
    assert np.abs(got_p - out.pooler_output.numpy()).max() < ATOL
    me = mask[..., None].astype(np.float32)
    want_e = (want_h * me).sum(1) / me.sum(1)
    want_e /= np.linalg.norm(want_e, axis=1, keepdims=True)
    assert np.abs(got_e - want_e).max() < ATOL


def test_bert_masked_lm_file_loads_the_encoder(tmp_path):
    torch.manual_seed(2)
    ref = transformers.BertForMaskedLM(_tiny_bert_config()).eval()  # keys bert.*, plus cls.* heads
    ours = load_bert(_save(ref, tmp_path / "mlm"))
    assert ours.pooler is None  # BertForMaskedLM has no pooler
    ids = RNG.integers(1, 120, (2, 7))
    with torch.no_grad():
        want = ref.bert(torch.from_numpy(ids)).last_hidden_state.numpy()
    i = ag.input("ids", ("B", "T"), "int64")
    got = ag.compile(ours(i)[0], inputs=[i])(ids)
    assert np.abs(got - want).max() < ATOL


def _tiny_vit_config(**kw):
    return transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, **kw,
    )  # fmt: skip


def test_vit_model_and_classifier_match(tmp_path):
    torch.manual_seed(3)
    x = RNG.normal(size=(2, 3, 16, 16)).astype(np.float32)
    base = transformers.ViTModel(_tiny_vit_config()).eval()
    ours = load_vit(_save(base, tmp_path / "vit"))
    p = ag.input("pixel_values", ("B", 3, 16, 16))
    got_h, got_p = ag.compile([ours.hidden_states(p), ours.pooler(ours.hidden_states(p))], inputs=[p])(x)
    with torch.no_grad():
        out = base(torch.from_numpy(x))
    assert np.abs(got_h - out.last_hidden_state.numpy()).max() < ATOL
    assert np.abs(got_p - out.pooler_output.numpy()).max() < ATOL

    cls = transformers.ViTForImageClassification(_tiny_vit_config(num_labels=5)).eval()
    ours = load_vit(_save(cls, tmp_path / "vit-cls"))
    with torch.no_grad():
        want = cls(torch.from_numpy(x)).logits.numpy()
    got = nn.compile_inference(ours)(x)
    assert got.shape == (2, 5) and np.abs(got - want).max() < ATOL


def test_convert_torch_checkpoint(tmp_path):
    torch.manual_seed(4)
    ref = transformers.BertModel(_tiny_bert_config()).eval()
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, ckpt)
    folder = tmp_path / "converted"
    folder.mkdir()
    ref.config.to_json_file(folder / "config.json")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin: convert it first"):
        shutil.copy(ckpt, folder / "pytorch_model.bin")
        load_bert(folder)
    shapes = convert_torch_checkpoint(ckpt, folder / "model.safetensors")
    assert shapes["embeddings.word_embeddings.weight"] == (120, 32)
    ours = load_bert(folder)
    got = ours.state_dict()["encoder.layer.1.output.dense.weight"]
    np.testing.assert_array_equal(got, ref.state_dict()["encoder.layer.1.output.dense.weight"].numpy())

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Evil()}, evil)
    with pytest.raises(ValueError, match=r"evil.pt: torch.load\(weights_only=True\) refused"):
        convert_torch_checkpoint(evil, tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


def test_convert_refuses_without_torch(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"needs torch .* ASG does not unpickle files itself"):
        convert_torch_checkpoint(tmp_path / "x.pt", tmp_path / "x.safetensors")


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_resnet_model_and_classifier_match(tmp_path, layer_type):
    from asg.zoo.hf import load_resnet

    torch.manual_seed(5)
    sizes = [8, 16, 32, 64] if layer_type == "basic" else [32, 64, 128, 256]
    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=sizes,
        depths=[1, 2, 1, 1],
        layer_type=layer_type,
        num_labels=7,
    )
    x = RNG.normal(size=(2, 3, 32, 32)).astype(np.float32)
    ref = transformers.ResNetForImageClassification(config)
    for m in ref.modules():  # non-trivial running statistics, so eval-mode batch norm is really compared
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    ref.eval()
    ours = load_resnet(_save(ref, tmp_path / "resnet"))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).logits.numpy()
        want_pooled = ref.resnet(torch.from_numpy(x)).pooler_output.numpy()[:, :, 0, 0]
    p = ag.input("x", ("B", 3, 32, 32))
    ours.eval()
    got, pooled = ag.compile([ours(p), ours.features(p)], inputs=[p])(x)
    assert np.abs(pooled - want_pooled).max() < ATOL
    assert np.abs(got - want).max() < ATOL
    base = load_resnet(_save(ref.resnet, tmp_path / "resnet-base"))  # ResNetModel names, no head
    np.testing.assert_array_equal(
        base.state_dict()["layer2.1.bn2.running_var"], ours.state_dict()["layer2.1.bn2.running_var"]
    )


def _save_bpe_files(tok, folder) -> None:
    """``vocab.json`` and ``merges.txt`` as transformers saves GPT-2's tokenizer."""
    d = tok.to_dict()
    (folder / "vocab.json").write_text(json.dumps({**d["vocab"], **d["special_tokens"]}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in d["merges"]))


def test_cli_generate_with_hf_gpt2_and_its_bpe_files_matches_transformers(tmp_path, capsys):
    from asg.data import ByteLevelBPETokenizer, load_shakespeare
    from asg.zoo.cli import run

    tok = ByteLevelBPETokenizer.train(load_shakespeare()[:20_000], vocab_size=400)
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    ref = transformers.GPT2LMHeadModel(config).eval()
    folder = _save(ref, tmp_path / "tiny-gpt2")
    _save_bpe_files(tok, folder)
    prompt = "ROMEO: What light"
    ids = tok.encode(prompt)
    assert (
        transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).encode(prompt)
        == ids
    )
    with torch.no_grad():
        want = ref.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=tok.vocab_size - 1
        )[0].tolist()
    args = ["generate", "gpt", "--hf", str(folder), "--prompt", prompt, "--max-new-tokens", "12"]
    text = run([*args, "--temperature", "0", "--show-ids"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "ids: " + " ".join(map(str, want))
    assert text == tok.decode(want) and text.startswith(prompt)
    # a tokenizer from elsewhere: an asg-data JSON file; and the errors
    tok.save(tmp_path / "bpe.json")
    assert run([*args, "--temperature", "0", "--tokenizer", str(tmp_path / "bpe.json")]) == text
    with pytest.raises(SystemExit, match="no BPE tokenizer"):
        run([*args, "--tokenizer", str(tmp_path)])
    small = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=300, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    )
    _save_bpe_files(tok, _save(small, tmp_path / "small"))
    with pytest.raises(SystemExit, match=r"has 400 ids, the model .* embeds 300"):
        run(["generate", "--hf", str(tmp_path / "small")])


GPT2_BPE = Path(os.environ.get("ASG_GPT2_BPE_DIR") or Path(__file__).resolve().parents[2] / ".data" / "gpt2")


@pytest.mark.data
@pytest.mark.skipif(
    not ((GPT2_BPE / "encoder.json").is_file() and (GPT2_BPE / "vocab.bpe").is_file()),
    reason=f"GPT-2 BPE files not in {GPT2_BPE} (run scripts/fetch_test_data.sh or set ASG_GPT2_BPE_DIR)",
)
def test_cli_generate_with_openai_gpt2_tokenizer_files(tmp_path, capsys):
    from asg.data import from_gpt2_files
    from asg.zoo.cli import run

    tok = from_gpt2_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe")
    torch.manual_seed(2)
    config = transformers.GPT2Config(n_positions=16, n_embd=8, n_layer=1, n_head=2)  # GPT-2's 50,257 ids
    ref = transformers.GPT2LMHeadModel(config).eval()
    folder = _save(ref, tmp_path / "gpt2-vocab")
    ids = tok.encode("Hello world")
    assert ids == [15496, 995]
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=50256)[0]
    args = ["generate", "--hf", str(folder), "--tokenizer", str(GPT2_BPE), "--prompt", "Hello world"]
    run([*args, "--max-new-tokens", "6", "--temperature", "0", "--show-ids"])
    assert capsys.readouterr().out.splitlines()[-1] == "ids: " + " ".join(map(str, want.tolist()))
