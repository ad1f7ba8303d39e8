"""Transforms against hand-written numpy, batch vs per-sample agreement, seeding and errors."""

from __future__ import annotations

import numpy as np
import pytest

from asg.data import (
    Clip,
    Compose,
    Flatten,
    Lambda,
    Log,
    MinMaxScale,
    Normalize,
    OneHot,
    RandomCrop,
    RandomHorizontalFlip,
    RandomNoise,
    ToFloat,
)
from asg.data.transforms import rng_scope

RNG = np.random.default_rng(42)
IMAGES = RNG.integers(0, 256, size=(6, 3, 5, 7), dtype=np.uint8)  # (batch, C, H, W)


def _per_sample(transform: object, batch: np.ndarray) -> np.ndarray:
    return np.stack([transform(x) for x in batch])  # type: ignore[operator]


# ----------------------------------------------------------------------------------- deterministic


def test_to_float() -> None:
    out = ToFloat(scale=1 / 255)(IMAGES)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, IMAGES.astype(np.float64) / 255, rtol=1e-6)
    assert ToFloat(dtype=np.float64)(np.array([3], np.int32)).tolist() == [3.0]
    source = np.ones(3, np.float32)
    ToFloat(scale=2.0)(source)
    assert source.tolist() == [1.0, 1.0, 1.0]  # never modifies its input
    with pytest.raises(ValueError, match="must be a float dtype, got int32"):
        ToFloat(dtype=np.int32)


def test_normalize_scalar_and_per_channel() -> None:
    x = IMAGES.astype(np.float32)
    np.testing.assert_allclose(Normalize(10.0, 4.0)(x), (x - 10) / 4, rtol=1e-6)
    mean, std = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    per_channel = Normalize(mean, std, channel_axis=0)
    expected = (x - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(per_channel.batch(x), expected, rtol=1e-6)
    np.testing.assert_allclose(_per_sample(per_channel, x), expected, rtol=1e-6)
    hwc = x.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(
        Normalize(mean, std, channel_axis=-1).batch(hwc), expected.transpose(0, 2, 3, 1), rtol=1e-6
    )
    assert per_channel(x[0]).dtype == np.float32


def test_normalize_fit() -> None:
    x = RNG.normal(3.0, 2.0, size=(50, 3, 4, 4))
    fitted = Normalize.fit(x, channel_axis=0)
    np.testing.assert_allclose(fitted.mean, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(fitted.std, x.std(axis=(0, 2, 3)))
    normalized = fitted.batch(x).astype(np.float64)
    np.testing.assert_allclose(normalized.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_normalize_errors() -> None:
    with pytest.raises(ValueError, match=r"std must be positive and finite, got \[1.0, 0.0\]"):
        Normalize([0, 0], [1, 0], channel_axis=0)
    with pytest.raises(ValueError, match="per-channel mean/std need channel_axis"):
        Normalize([0, 0], 1.0)
    with pytest.raises(ValueError, match="channel_axis 3 is out of range for input with 3 dims"):
        Normalize([0, 0, 0], 1.0, channel_axis=3)(IMAGES[0])


def test_min_max_scale() -> None:
    data = np.array([[0.0, 10.0, 5.0], [4.0, 30.0, 5.0], [2.0, 20.0, 5.0]])
    scaler = MinMaxScale.fit(data, feature_range=(-1.0, 1.0))
    expected = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [0.0, 0.0, -1.0]])  # constant column -> low
    np.testing.assert_allclose(scaler.batch(data), expected)
    np.testing.assert_allclose(scaler(data[1]), expected[1])
    with pytest.raises(ValueError, match="low < high"):
        MinMaxScale(0, 1, feature_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="data_max must be >= data_min"):
        MinMaxScale(2.0, 1.0)


def test_one_hot() -> None:
    labels = np.array([[0, 3], [2, 1]])
    out = OneHot(4)(labels)
    assert out.shape == (2, 2, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(4)[labels])
    assert OneHot(3, dtype=np.int64)(np.float64(2.0)).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"OneHot label 5 is outside 0\.\.3"):
        OneHot(4)(np.array([1, 5]))
    with pytest.raises(ValueError, match="OneHot label -1"):
        OneHot(4)(np.array([-1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        OneHot(4)(np.array([0.5]))


def test_clip_log_flatten_compose_lambda() -> None:
    x = np.array([-2.0, 0.0, 0.5, 9.0])
    np.testing.assert_array_equal(Clip(0, 1)(x), np.clip(x, 0, 1))
    np.testing.assert_array_equal(Clip(high=0.2)(x), np.minimum(x, 0.2))
    np.testing.assert_allclose(Log(offset=3.0)(x), np.log(x + 3.0))
    np.testing.assert_allclose(Log(offset=3.0, base=10)(x), np.log10(x + 3.0))
    assert Log()(np.array([1, np.e**2])).dtype == np.float64
    assert Log()(np.array([1, 8], np.int32)).dtype == np.float32
    assert Flatten()(IMAGES[0]).shape == (105,) and Flatten().batch(IMAGES).shape == (6, 105)
    pipeline = Compose([ToFloat(scale=1 / 255), Clip(0.1, 0.9), Flatten()])
    np.testing.assert_allclose(
        pipeline.batch(IMAGES), np.clip(IMAGES / 255, 0.1, 0.9).reshape(6, -1), rtol=1e-6
    )
    np.testing.assert_array_equal(pipeline.batch(IMAGES), _per_sample(pipeline, IMAGES))
    plain_function = Compose([lambda a: a[::-1]])  # no batch method: applied per sample
    np.testing.assert_array_equal(plain_function.batch(np.arange(6).reshape(2, 3)), [[2, 1, 0], [5, 4, 3]])
    assert Lambda(lambda a: a.sum()).batch(np.ones((3, 2))).tolist() == [2.0, 2.0, 2.0]


def test_deterministic_errors() -> None:
    with pytest.raises(ValueError, match="x \\+ offset are <= 0"):
        Log()(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="Clip low 2 is greater than high 1"):
        Clip(2, 1)
    with pytest.raises(ValueError, match="Clip needs low, high or both"):
        Clip()
    with pytest.raises(TypeError, match="is not callable"):
        Compose([1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="base must be positive and not 1"):
        Log(base=1)


# ---------------------------------------------------------------------------------------- random


def _window_positions(padded: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    h, w = crop.shape[-2:]
    found = []
    for top in range(padded.shape[-2] - h + 1):
        for left in range(padded.shape[-1] - w + 1):
            if np.array_equal(padded[..., top : top + h, left : left + w], crop):
                found.append((top, left))
    return found


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    image = RNG.integers(1, 256, size=(3, 5, 7), dtype=np.uint8)  # no zeros: padding is recognisable
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2)))
    crop = RandomCrop(size=(5, 7), padding=2, seed=0)
    offsets = set()
    for _ in range(40):
        out = crop(image)
        assert out.shape == (3, 5, 7) and out.dtype == np.uint8
        positions = _window_positions(padded, out)
        assert positions, "crop is not a window of the padded image"
        offsets.update(positions)
    assert len(offsets) > 10  # 25 possible offsets, chosen at random
    batch = crop.batch(np.repeat(image[None], 8, axis=0))
    assert batch.shape == (8, 3, 5, 7) and all(_window_positions(padded, b) for b in batch)
    assert len({b.tobytes() for b in batch}) > 1  # each sample gets its own offset


def test_random_crop_options() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(RandomCrop(4, seed=0)(image), image)  # no padding, full size: identity
    edge = RandomCrop(4, padding=1, pad_mode="edge", seed=1)(image)
    padded_edge = np.pad(image, 1, mode="edge")
    assert _window_positions(padded_edge, edge)
    small = RandomCrop((2, 3), seed=0)(image)
    assert small.shape == (2, 3) and _window_positions(image, small)
    hwc = RNG.integers(1, 255, size=(4, 6, 3), dtype=np.uint8)
    out = RandomCrop(4, padding=1, fill=0, channels_last=True, seed=5).batch(hwc[None].repeat(3, axis=0))
    assert out.shape == (3, 4, 4, 3)
    with pytest.raises(ValueError, match=r"size \(5, 5\) is larger than the padded image \(4, 4\)"):
        RandomCrop(5)(image)
    with pytest.raises(
        ValueError, match=r"expected an image laid out as \(\.\.\., H, W\), got an array with 1 dims"
    ):
        RandomCrop(2)(np.zeros(4))


def test_random_horizontal_flip() -> None:
    image = IMAGES[0]
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(image), image[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(image), image)
    hwc = image.transpose(1, 2, 0)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0, channels_last=True)(hwc), hwc[:, ::-1])
    batch = np.repeat(image[None], 2000, axis=0)
    out = RandomHorizontalFlip(p=0.3, seed=0).batch(batch)
    flipped = np.array([np.array_equal(o, image[..., ::-1]) for o in out])
    kept = np.array([np.array_equal(o, image) for o in out])
    assert np.all(flipped | kept) and abs(flipped.mean() - 0.3) < 0.04
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        RandomHorizontalFlip(p=1.5)


def test_random_noise_statistics() -> None:
    x = np.full((200, 100), 5.0)
    out = RandomNoise(std=0.5, mean=1.0, seed=0)(x)
    assert out.dtype == np.float32
    noise = out - 5.0
    assert abs(noise.mean() - 1.0) < 0.01 and abs(noise.std() - 0.5) < 0.01
    with pytest.raises(ValueError, match="std must be non-negative"):
        RandomNoise(std=-1)


def test_random_transforms_are_reproducible_from_their_seed() -> None:
    for make in (
        lambda: RandomCrop(5, padding=2, seed=11),
        lambda: RandomHorizontalFlip(seed=11),
        lambda: RandomNoise(0.1, seed=11),
    ):
        a, b = make(), make()
        np.testing.assert_array_equal(a.batch(IMAGES), b.batch(IMAGES))
        first, second = a.batch(IMAGES), a.batch(IMAGES)
        assert not np.array_equal(first, second)  # the generator moves on


def test_explicit_rng_and_rng_scope_take_precedence() -> None:
    noise = RandomNoise(1.0, seed=0)
    by_argument = noise(np.zeros(5), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(by_argument, np.random.default_rng(3).normal(0, 1, 5).astype(np.float32))
    with rng_scope(np.random.SeedSequence(8)):
        scoped_a = noise(np.zeros(5))
    with rng_scope(np.random.SeedSequence(8)):
        scoped_b = RandomNoise(1.0, seed=999)(np.zeros(5))
    np.testing.assert_array_equal(scoped_a, scoped_b)  # the scope, not the transform's seed, decides
    with rng_scope(np.random.default_rng(4)):
        from_generator = noise(np.zeros(5))
    np.testing.assert_array_equal(from_generator, np.random.default_rng(4).normal(0, 1, 5).astype(np.float32))
    outside = noise(np.zeros(5))  # after the scope: the transform's own generator again
    assert not np.array_equal(outside, scoped_a)


def test_repr_names_the_parameters() -> None:
    assert repr(Clip(0, 1)) == "Clip(low=0, high=1)"
    assert repr(RandomHorizontalFlip(p=0.25)) == "RandomHorizontalFlip(p=0.25, channels_last=False)"
