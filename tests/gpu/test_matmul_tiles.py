"""Every matmul tile variant of asg-gpu (scalar and vec4 kernels) against numpy, and the tile choice."""

import math

import numpy as np
import pytest

import asg.core as ag
from asg.gpu.codegen import nbytes
from asg.gpu.device import get_device
from asg.gpu.kernels.attention import subgroup_size
from asg.gpu.kernels.linalg import CANDIDATE_TILES, TILES, matmul_program, matmul_tile, split_k

RNG = np.random.default_rng(0)


def _run(a: np.ndarray, b: np.ndarray, **program_options) -> tuple[np.ndarray, str]:
    """``a @ b`` through the matmul program's dispatches; returns the product and the first kernel's text.

    With ``a_transposed=True`` the buffer of input 0 holds ``a.T``.
    """
    out_shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
    prog = matmul_program(a.shape, b.shape, out_shape, "test", **program_options)
    if program_options.get("a_transposed"):
        a = np.ascontiguousarray(a.T)
    if program_options.get("b_transposed"):
        b = np.ascontiguousarray(b.T)
    dev = get_device()
    out_bytes = nbytes(out_shape, "float32")
    values = {("in", 0): dev.create_buffer(a.nbytes), ("in", 1): dev.create_buffer(b.nbytes)}
    values[("out", 0)] = dev.create_buffer(out_bytes)
    values.update({("tmp", j): dev.create_buffer(nb) for j, nb in enumerate(prog.temps)})
    dev.write(values[("in", 0)], a)
    dev.write(values[("in", 1)], b)
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    for d in prog.dispatches:
        cpass.set_pipeline(dev.pipeline(d.wgsl, len(d.args)))
        cpass.set_bind_group(0, dev.bind_group(len(d.args), [(values[r], 0, values[r].size) for r in d.args]))
        cpass.dispatch_workgroups(*d.grid)
    cpass.end()
    dev.queue.submit([enc.finish()])
    got = np.frombuffer(dev.read(values[("out", 0)], out_bytes), np.float32).reshape(out_shape)
    for buf in values.values():
        buf.destroy()
    return got, prog.dispatches[0].wgsl


def _check(a_shape, b_shape, **options) -> str:
    a = RNG.standard_normal(a_shape).astype(np.float32)
    b = RNG.standard_normal(b_shape).astype(np.float32)
    got, wgsl = _run(a, b, **options)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * math.sqrt(a_shape[-1]))
    return wgsl


SHAPES = {
    "odd": ((37, 53), (53, 29)),  # k and n not multiples of 4: the scalar kernel
    "vec4-ragged": ((70, 36), (36, 68)),  # vec4, no tile divides m, n or k
    "vec4-whole-tiles": ((128, 64), (64, 128)),  # every tile divides m, n and k
    "batched-broadcast": ((3, 1, 66, 20), (2, 20, 72)),  # (B, H, T, D) @ (H, D, T)-like
}


EVERY_TILE = list(dict.fromkeys([t for t, _ in TILES] + list(CANDIDATE_TILES)))


def _tile_id(tile) -> str:
    return "x".join(map(str, tile[:3])) + ("-2stage" if tile[3:] == (2,) else "")


@pytest.mark.parametrize("tile", EVERY_TILE, ids=_tile_id)
@pytest.mark.parametrize("shapes", list(SHAPES.values()), ids=list(SHAPES))
def test_every_tile_matches_numpy(tile, shapes):
    first = _check(*shapes, config=tile).splitlines()[0]
    assert first.startswith(f"// matmul {'x'.join(map(str, tile[:3]))}")
    # the scalar kernel (k or n not a multiple of 4) has one stage whatever the tile asks
    assert ("2-stage" in first) == (tile[3:] == (2,) and "vec4" in first)


@pytest.mark.parametrize(
    ("shapes", "splits"),
    [(((64, 1000), (1000, 68)), 3), (((2, 3, 40, 300), (3, 300, 36)), 2), (((70, 36), (36, 68)), 5)],
    ids=["ragged-k", "batched", "more-slices-than-k-steps"],
)
@pytest.mark.parametrize(
    "tile",
    [None, (128, 128, 16, 2), (64, 64, 32, 2)],
    ids=["default", "128x128x16-2stage", "64x64x32-2stage"],
)
def test_split_k_matches_numpy(shapes, splits, tile):
    wgsl = _check(*shapes, splits=splits, config=tile)
    assert f"split-k {splits}" in wgsl.splitlines()[0]
    assert ("2-stage" in wgsl.splitlines()[0]) == (tile is not None)


@pytest.mark.parametrize(
    ("shapes", "splits"),
    [(((64, 2050), (2050, 65)), None), (((40, 1001), (1001, 65)), 3), (((2, 30, 700), (700, 13)), 2)],
    ids=["default", "ragged", "batched"],
)
def test_split_k_in_the_scalar_kernel_matches_numpy(shapes, splits):
    # n not a multiple of 4 (a tied LM head's weight gradient, (d, B*T) @ (B*T, 65)): the scalar kernel
    wgsl = _check(*shapes, splits=splits)
    first = wgsl.splitlines()[0]
    assert "vec4" not in first and f"split-k {splits or split_k(64, 65, 2050)}" in first


@pytest.mark.parametrize("tile", EVERY_TILE, ids=_tile_id)
def test_a_transposed_operand_read_in_place_matches_numpy(tile):
    wgsl = _check((68, 40), (40, 36), config=tile, a_transposed=True)  # ragged against every tile
    assert "A^T" in wgsl.splitlines()[0]


@pytest.mark.parametrize("tile", EVERY_TILE, ids=_tile_id)
def test_a_transposed_right_operand_read_in_place_matches_numpy(tile):
    wgsl = _check((2, 34, 40), (40, 36), config=tile, b_transposed=True)  # ragged, a batch folded into m
    assert "B^T" in wgsl.splitlines()[0]
    wgsl = _check((68, 40), (40, 36), config=tile, b_transposed=True, a_transposed=True)
    assert "A^T B^T" in wgsl.splitlines()[0]


def test_a_transposed_right_operand_needs_the_vec4_kernel_and_a_2d_b():
    with pytest.raises(ValueError, match="transposed B needs a 2-D B"):
        matmul_program((6, 8), (8, 6), (6, 6), b_transposed=True)
    with pytest.raises(ValueError, match="transposed B needs a 2-D B"):
        matmul_program((2, 8, 8), (2, 8, 8), (2, 8, 8), b_transposed=True)


def test_a_transposed_operand_with_split_k_matches_numpy():
    wgsl = _check((64, 1024), (1024, 32), a_transposed=True)
    assert "split-k" in wgsl.splitlines()[0] and "A^T" in wgsl.splitlines()[0]
    wgsl = _check((68, 1000), (1000, 36), a_transposed=True, config=(64, 64, 16, 2), splits=3)
    assert "2-stage split-k 3 A^T" in wgsl.splitlines()[0]
    with pytest.raises(ValueError, match="transposed A needs 2-D operands"):
        matmul_program((6, 8), (8, 4), (6, 4), a_transposed=True)


@pytest.mark.parametrize("tile", [(64, 128, 32, 2), (128, 128, 32, 2), (128, 128, 64)])
def test_a_tile_beyond_its_workgroup_memory_limit_is_refused(tile):
    with pytest.raises(ValueError, match="more than 32768 B of workgroup memory"):
        matmul_program((256, 256), (256, 256), (256, 256), config=tile, workgroup_bytes=32768)
    big = matmul_program((256, 256), (256, 256), (256, 256), config=tile, workgroup_bytes=65536)
    assert big.dispatches[0].wgsl.startswith(f"// matmul {'x'.join(map(str, tile[:3]))} vec4")


def test_long_k_products_with_few_tiles_split_k():
    assert split_k(512, 2048, 8192) == 4  # GPT's MLP weight gradient: 64 tiles of 128x128
    assert split_k(1024, 1024, 1024) == 1 and split_k(4096, 4096, 16384) == 1  # k not long, or tiles enough
    (mm, _sum) = matmul_program((64, 2048), (2048, 64), (64, 64)).dispatches
    assert "split-k 4" in mm.wgsl and mm.grid[2] == 4
    prog = matmul_program((64, 2048), (2048, 64), (64, 64), epilogue=None, splits=1)
    assert len(prog.dispatches) == 1


def _groups(tile, m, n, batch=1):
    return -(-m // tile[0]) * -(-n // tile[1]) * batch


def test_the_tile_keeps_the_gpu_busy_without_padding_waste():
    big = TILES[0][0]
    # 128x128 where it gives enough workgroups
    assert matmul_tile(4096, 4096, 4096) == matmul_tile(2048, 2048, 2048) == big
    assert matmul_tile(256, 256, 64, batch=256) == big  # attention's q @ k^T
    # one 128x128 workgroup per two SMs at 1024^3: the 64-row tile, along the longer side
    assert _groups(big, 1024, 1024) < TILES[0][1]
    assert matmul_tile(1024, 1024, 1024) == (64, 128, 32)
    assert [matmul_tile(m, 256, 64)[:2] for m in (16384, 4096, 2048)] == [(128, 128), (128, 64), (64, 64)]
    # never a tile side beyond the product's (rounded to 64): attention's p @ v has n = 64
    assert matmul_tile(256, 64, 256, batch=256)[:2] == (128, 64)
    assert matmul_tile(64, 1000, 64)[0] == 64
    assert matmul_tile(8, 8, 8) == TILES[-1][0]  # nothing gives enough: the smallest tile
    for m, n, batch in [(1024, 1024, 1), (512, 2048, 1), (256, 64, 256), (8192, 512, 1), (100, 3000, 7)]:
        tile = matmul_tile(m, n, 64, batch)
        fewest = dict(TILES)[tile]
        assert _groups(tile, m, n, batch) >= fewest


def test_a_split_k_product_in_a_compiled_function_matches_numpy():
    x = ag.input("x", (64, 2048))
    y = ag.input("y", (2048, 64))
    a = RNG.standard_normal((64, 2048)).astype(np.float32)
    b = RNG.standard_normal((2048, 64)).astype(np.float32)
    f = ag.compile(x @ y, inputs=[x, y], backend="wgpu")
    np.testing.assert_allclose(f(a, b), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)
    assert f.plan_for(a, b).dispatch_count == 2


def test_a_linear_layer_s_split_k_weight_gradient_stores_its_transpose():
    # dW = (x^T dy)^T: the split-K product reads x in place and its slices' sum stores dW (out, in)
    # directly, so neither transpose runs; the gradient equals numpy's
    x = ag.input("x", (2048, 64))
    w = ag.parameter(RNG.standard_normal((32, 64)).astype(np.float32), name="w")
    c = ag.constant(RNG.standard_normal((2048, 32)).astype(np.float32))
    loss = ((x @ w.T) * c).sum()
    f = ag.compile(ag.grad(loss, [w]), inputs=[x], backend="wgpu")
    data = RNG.standard_normal((2048, 64)).astype(np.float32)
    want = c.numpy().astype(np.float64).T @ data
    np.testing.assert_allclose(f(data)[0], want, rtol=1e-5, atol=1e-4)
    plan = f.plan_for(data)
    assert [ops for _, ops in plan.dispatch_labels()] == ["matmul", "matmul"]
    assert "out[(i % 32) * 64 + i / 32]" in plan.dispatch_sources()[1]


def test_the_backend_lowering_uses_the_chosen_tile():
    x = ag.input("x", (4, 64, 32))
    w = ag.parameter(RNG.standard_normal((32, 256)).astype(np.float32), name="w")
    f = ag.compile(x @ w, backend="wgpu")
    data = RNG.standard_normal((4, 64, 32)).astype(np.float32)
    np.testing.assert_allclose(f(data), data @ w.numpy(), rtol=1e-5, atol=1e-5)
    (prog,) = [p for p in f.plan_for(data).programs if p.dispatches]
    bm, bn, bk = matmul_tile(256, 256, 32)
    assert prog.dispatches[0].wgsl.startswith(f"// matmul {bm}x{bn}x{bk} vec4")


@pytest.mark.parametrize("shift", [0, 24, -40], ids=["square", "more-keys", "more-queries"])
@pytest.mark.parametrize("tile", [(64, 64, 16), (128, 64, 32), (64, 128, 16, 2)], ids=_tile_id)
def test_a_causally_zero_operand_skips_its_zero_k_steps(tile, shift):
    # dS of causal attention: row r of A is zero past column r + shift; each tile's K loop stops at
    # its last row's limit and the product still equals numpy's (rows with no column give zeros)
    m, k, n = 136, 136 + shift, 68
    a = RNG.standard_normal((3, m, k)).astype(np.float32)
    a[:, np.arange(k)[None, :] > np.arange(m)[:, None] + shift] = 0.0
    b = RNG.standard_normal((3, k, n)).astype(np.float32)
    got, wgsl = _run(a, b, config=tile, a_causal=shift)
    assert f"row0 + {tile[0] + shift}" in wgsl
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5 * math.sqrt(k))


SHUFFLED_A_TILES = [(64, 64, 16), (64, 128, 32), (128, 64, 32), (128, 128, 16)]
SUBGROUP_SHAPES = {
    **{name: SHAPES[name] for name in ("vec4-ragged", "vec4-whole-tiles", "batched-broadcast")},
    "ragged-k": ((130, 100), (100, 132)),  # m, n, k past whole tiles and K steps of every tile
    "batched": ((2, 3, 70, 36), (2, 3, 36, 68)),
}


def _device_subgroup_size() -> int:
    size = subgroup_size()
    if size == 0:
        pytest.skip("the device has no subgroup feature: A cannot reach the invocations by shuffles")
    return size


@pytest.mark.parametrize("tile", SHUFFLED_A_TILES, ids=_tile_id)
@pytest.mark.parametrize("shapes", list(SUBGROUP_SHAPES.values()), ids=list(SUBGROUP_SHAPES))
def test_a_by_subgroup_shuffles_matches_numpy(tile, shapes):
    # the kernel generated for the device's subgroup size (lavapipe: 8, NVIDIA: 32) has no tile of A
    size = _device_subgroup_size()
    wgsl = _check(*shapes, config=tile, subgroup=size)
    assert wgsl.splitlines()[0] == f"// matmul {_tile_id(tile)} vec4 sg{size}"
    assert "var<workgroup> As" not in wgsl and "subgroupShuffle" in wgsl


@pytest.mark.parametrize("options", [{"splits": 3}, {"b_transposed": True}], ids=["split-k", "b-transposed"])
def test_a_by_subgroup_shuffles_with_split_k_or_b_transposed_matches_numpy(options):
    size = _device_subgroup_size()
    wgsl = _check((68, 1000), (1000, 36), config=(64, 64, 16), subgroup=size, **options)
    assert f"sg{size}" in wgsl.splitlines()[0]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"subgroup": 4}, r"a subgroup size in \(8, 16, 32, 64\)"),
        ({"subgroup": 32, "config": (64, 64, 16, 2)}, "one stage"),
        ({"subgroup": 16, "config": (64, 64, 8)}, r"\(BM / 64\) \* BK a multiple of 16 lanes"),
        ({"subgroup": 8, "a_transposed": True}, "A not transposed"),
    ],
    ids=["size-4", "2-stage", "bk-8-on-16-lanes", "a-transposed"],
)
def test_a_by_subgroup_shuffles_refuses_what_it_does_not_cover(options, why):
    with pytest.raises(ValueError, match=f"A by subgroup shuffles .*needs .*{why}"):
        matmul_program((64, 64), (64, 64), (64, 64), workgroup_bytes=32768, **options)
    with pytest.raises(ValueError, match="A by subgroup shuffles needs k and n multiples of 4"):
        matmul_program((6, 6), (6, 6), (6, 6), subgroup=8)  # the scalar kernel


def test_batched_products_on_64x128_tiles_shuffle_a_by_default(monkeypatch):
    # where subgroups are at least 16 wide: attention's p @ v shape (128x64 tiles) gets the shuffled-A
    # kernel; unbatched products, 128x128 tiles and lavapipe's 8-wide subgroups keep A's tile, unless
    # ASG_WGPU_MATMUL_SUBGROUPS=1 asks for it everywhere it applies (0: nowhere)
    from asg.gpu.kernels import attention

    def header(a, b, out):
        return matmul_program(a, b, out, workgroup_bytes=32768).dispatches[0].wgsl.splitlines()[0]

    p_v = ((32, 8, 256, 256), (32, 8, 256, 64), (32, 8, 256, 64))
    q_k = ((32, 8, 256, 64), (32, 8, 64, 256), (32, 8, 256, 256))
    square = ((1024, 1024), (1024, 1024), (1024, 1024))
    monkeypatch.delenv("ASG_WGPU_MATMUL_SUBGROUPS", raising=False)
    monkeypatch.setattr(attention, "subgroup_size", lambda: 32)
    assert header(*p_v) == "// matmul 128x64x32 vec4 sg32"
    assert header(*q_k) == "// matmul 128x128x16 vec4"
    assert header(*square) == "// matmul 64x128x32 vec4"
    monkeypatch.setenv("ASG_WGPU_MATMUL_SUBGROUPS", "0")
    assert header(*p_v) == "// matmul 128x64x32 vec4"
    monkeypatch.setattr(attention, "subgroup_size", lambda: 8)
    monkeypatch.delenv("ASG_WGPU_MATMUL_SUBGROUPS")
    assert header(*p_v) == "// matmul 128x64x32 vec4"
    monkeypatch.setenv("ASG_WGPU_MATMUL_SUBGROUPS", "1")
    assert header(*p_v) == "// matmul 128x64x32 vec4 sg8"
    assert header(*q_k) == "// matmul 128x128x16 vec4 sg8"
    assert header(*square) == "// matmul 64x128x32 vec4"
    monkeypatch.setattr(attention, "subgroup_size", lambda: 0)  # no subgroup feature
    assert header(*p_v) == "// matmul 128x64x32 vec4"
