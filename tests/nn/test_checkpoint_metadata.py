"""nn.read_checkpoint_metadata: a checkpoint's metadata from the safetensors header alone, checked."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from asg import nn


def checkpoint(tmp_path, **metadata):
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    path = tmp_path / "ckpt.safetensors"
    nn.save_checkpoint(path, model, nn.optim.Adam(model.parameters()), **metadata)
    return path, model


def test_metadata_equals_what_load_checkpoint_returns(tmp_path):
    meta = {"epoch": 2, "model_name": "mlp", "config": {"hidden": [8, 4]}, "metrics": {"acc": 0.5}}
    path, model = checkpoint(tmp_path, **meta)
    got = nn.read_checkpoint_metadata(path)
    assert got == nn.load_checkpoint(path, model)
    assert {k: got[k] for k in meta} == meta and set(got["versions"]) >= {"asg-core", "asg-nn"}


def test_tensor_data_is_not_read(tmp_path):
    path, _ = checkpoint(tmp_path, step=7)
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n :] = b"\xff" * (len(raw) - 8 - n)  # garbage tensor bytes, same size
    path.write_bytes(bytes(raw))
    assert nn.read_checkpoint_metadata(path)["step"] == 7


def write_safetensors(path, header: object, data: bytes = b"", length: int | None = None) -> None:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"abc"), "shorter than the 8-byte header length"),
        (lambda p: write_safetensors(p, {}, length=2**62), r"header length 4611686018427387904 exceeds"),
        (lambda p: p.write_bytes(struct.pack("<Q", 3) + b"{x}"), "the header is not JSON"),
        (lambda p: write_safetensors(p, [1, 2]), "the header is a JSON list, not an object"),
        (lambda p: write_safetensors(p, {"__metadata__": {"a": 1}}), "__metadata__ is not a str -> str"),
        (lambda p: write_safetensors(p, {"w": {"dtype": "F32", "shape": [2]}}), "'w' has no .* data_offsets"),
        (
            lambda p: write_safetensors(
                p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234"
            ),
            "the tensors end at byte .*truncated",
        ),
    ],
    ids=["short", "huge-length", "not-json", "list", "metadata-values", "no-offsets", "truncated"],
)
def test_bad_files_raise_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(ValueError, match=rf"bad\.safetensors: not a readable safetensors file \(.*{message}"):
        nn.read_checkpoint_metadata(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    nn.save_state_dict({"w": np.zeros(2, np.float32)}, tmp_path / "weights.safetensors", {"a": "b"})
    with pytest.raises(ValueError, match=r"weights\.safetensors: not an asg checkpoint"):
        nn.read_checkpoint_metadata(tmp_path / "weights.safetensors")
    nn.save_state_dict({}, tmp_path / "odd.safetensors", {"asg.checkpoint": json.dumps({"format": "x"})})
    with pytest.raises(ValueError, match=r"odd\.safetensors: unsupported checkpoint header"):
        nn.read_checkpoint_metadata(tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match=r"nothing\.safetensors: not a readable safetensors file"):
        nn.read_checkpoint_metadata(tmp_path / "nothing.safetensors")
