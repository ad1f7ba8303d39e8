"""Losses: every reduction, class weights, against PyTorch (forward and gradients) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import torch_or_skip

import asg.core as ag
import asg.core.testing as agt
from asg import nn
from asg.nn import functional as F

rng = np.random.default_rng(0)
PRED = rng.normal(size=(6, 4))
TARGET = rng.normal(size=(6, 4))
LOGITS = rng.normal(size=(6, 5)) * 2
LOGITS_3D = rng.normal(size=(3, 5, 4))
LABELS = np.array([0, 4, 2, 2, -100, 1])
LABELS_3D = np.array([[0, 1, 4, 2], [3, 3, -100, 0], [1, 2, 2, 4]])
PROBS = np.exp(rng.normal(size=(6, 5)))
PROBS /= PROBS.sum(1, keepdims=True)
WEIGHT = np.array([0.5, 2.0, 1.0, 0.1, 3.0])
P01 = 1 / (1 + np.exp(-PRED))
T01 = rng.random((6, 4))
LOGP = PRED - np.log(np.exp(PRED).sum(1, keepdims=True))


def _t(torch, a):
    return torch.tensor(np.asarray(a, np.float32))


def _cases(torch):
    tf = torch.nn.functional
    w32 = np.asarray(WEIGHT, np.float32)
    cases = []
    for r in ("none", "mean", "sum"):
        cases += [
            (f"mse-{r}", lambda a, b, r=r: F.mse_loss(a, b, r), lambda a, b, r=r: tf.mse_loss(a, b, reduction=r),
             [PRED, TARGET]),
            (f"l1-{r}", lambda a, b, r=r: F.l1_loss(a, b, r), lambda a, b, r=r: tf.l1_loss(a, b, reduction=r),
             [PRED, TARGET]),
            (f"smooth_l1-{r}", lambda a, b, r=r: F.smooth_l1_loss(a, b, r, beta=0.7),
             lambda a, b, r=r: tf.smooth_l1_loss(a, b, reduction=r, beta=0.7), [PRED, TARGET]),
            (f"huber-{r}", lambda a, b, r=r: F.huber_loss(a, b, r, delta=0.6),
             lambda a, b, r=r: tf.huber_loss(a, b, reduction=r, delta=0.6), [PRED, TARGET]),
            (f"ce-{r}", lambda a, y, r=r: F.cross_entropy(a, y, reduction=r),
             lambda a, y, r=r: tf.cross_entropy(a, y, reduction=r), [LOGITS, LABELS]),
            (f"ce-weight-smooth-{r}", lambda a, y, r=r: F.cross_entropy(a, y, ag.constant(w32), reduction=r,
                                                                           label_smoothing=0.2),
             lambda a, y, r=r: tf.cross_entropy(a, y, torch.tensor(w32), reduction=r, label_smoothing=0.2),
             [LOGITS, LABELS]),
            (f"ce-3d-weight-{r}", lambda a, y, r=r: F.cross_entropy(a, y, ag.constant(w32), reduction=r),
             lambda a, y, r=r: tf.cross_entropy(a, y, torch.tensor(w32), reduction=r), [LOGITS_3D, LABELS_3D]),
            (f"ce-3d-smooth-{r}", lambda a, y, r=r: F.cross_entropy(a, y, reduction=r, label_smoothing=0.1),
             lambda a, y, r=r: tf.cross_entropy(a, y, reduction=r, label_smoothing=0.1), [LOGITS_3D, LABELS_3D]),
            (f"ce-probs-{r}", lambda a, p, r=r: F.cross_entropy(a, p, ag.constant(w32), reduction=r,
                                                                   label_smoothing=0.1),
             lambda a, p, r=r: tf.cross_entropy(a, p, torch.tensor(w32), reduction=r, label_smoothing=0.1),
             [LOGITS, PROBS]),
            (f"nll-weight-{r}", lambda a, y, r=r: F.nll_loss(a, y, ag.constant(w32), reduction=r),
             lambda a, y, r=r: tf.nll_loss(a, y, torch.tensor(w32), reduction=r), [LOGITS, LABELS]),
            (f"bce-{r}", lambda p, t, r=r: F.binary_cross_entropy(p, t, reduction=r),
             lambda p, t, r=r: tf.binary_cross_entropy(p, t, reduction=r), [P01, T01]),
            (f"bce-logits-posw-{r}", lambda x, t, r=r: F.binary_cross_entropy_with_logits(
                x, t, reduction=r, pos_weight=ag.constant(np.float32([1.0, 2.0, 0.5, 3.0]))),
             lambda x, t, r=r: tf.binary_cross_entropy_with_logits(
                x, t, reduction=r, pos_weight=torch.tensor([1.0, 2.0, 0.5, 3.0])), [PRED * 3, T01]),
            (f"kl-{r}", lambda i, t, r=r: F.kl_div(i, t, r), lambda i, t, r=r: tf.kl_div(i, t, reduction=r),
             [LOGP, T01 + 0.1]),
            (f"kl-logtarget-{r}", lambda i, t, r=r: F.kl_div(i, t, r, log_target=True),
             lambda i, t, r=r: tf.kl_div(i, t, reduction=r, log_target=True), [LOGP, LOGP[::-1].copy()]),
        ]  # fmt: skip
    cases.append(
        ("kl-batchmean", lambda i, t: F.kl_div(i, t, "batchmean"), lambda i, t: tf.kl_div(i, t, reduction="batchmean"),
         [LOGP, T01 + 0.1])
    )  # fmt: skip
    return cases


N_CASES = 43


def test_case_count() -> None:
    torch = torch_or_skip()
    assert len(_cases(torch)) == N_CASES


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # torch's kl_div "mean" notice
@pytest.mark.parametrize("index", range(N_CASES))
def test_loss_matches_torch_and_finite_differences(index: int) -> None:
    torch = torch_or_skip()
    _name, ours, theirs, arrays = _cases(torch)[index]
    agt.check_op(ours, *arrays, torch_fn=theirs, order=1, torch_rtol=1e-5, torch_atol=1e-6)


@pytest.mark.torch
def test_loss_modules_match_their_functions() -> None:
    torch = torch_or_skip()
    tn = torch.nn
    pairs = [
        (nn.CrossEntropyLoss(weight=WEIGHT, ignore_index=2, label_smoothing=0.05),
         tn.CrossEntropyLoss(weight=torch.tensor(WEIGHT, dtype=torch.float32), ignore_index=2, label_smoothing=0.05),
         LOGITS, np.where(LABELS < 0, 3, LABELS)),
        (nn.NLLLoss(reduction="sum"), tn.NLLLoss(reduction="sum"), LOGP[:, :4], np.array([0, 3, 1, 1, 2, 0])),
        (nn.MSELoss(), tn.MSELoss(), PRED, TARGET),
        (nn.L1Loss("sum"), tn.L1Loss(reduction="sum"), PRED, TARGET),
        (nn.SmoothL1Loss(beta=0.5), tn.SmoothL1Loss(beta=0.5), PRED, TARGET),
        (nn.HuberLoss(delta=2.0), tn.HuberLoss(delta=2.0), PRED * 3, TARGET),
        (nn.BCELoss(weight=T01), tn.BCELoss(weight=torch.tensor(T01, dtype=torch.float32)), P01, T01),
        (nn.BCEWithLogitsLoss(pos_weight=[2.0, 1.0, 1.0, 0.5]),
         tn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 1.0, 0.5])), PRED, T01),
        (nn.KLDivLoss("batchmean", log_target=True), tn.KLDivLoss(reduction="batchmean", log_target=True), LOGP, LOGP[::-1].copy()),
    ]  # fmt: skip
    for ours, theirs, a, b in pairs:
        b_in = b.astype(np.int64) if b.dtype.kind == "i" else b.astype(np.float32)
        got = ag.compile(ours(ag.constant(a.astype(np.float32)), ag.constant(b_in)))()
        want = theirs(_t(torch, a), torch.tensor(b_in)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=type(ours).__name__)


@pytest.mark.torch
def test_kl_div_with_zero_targets_and_bce_clamp_match_torch() -> None:
    torch = torch_or_skip()
    t = T01.copy()
    t[0, :2] = 0.0
    got = ag.compile(
        F.kl_div(ag.constant(LOGP.astype(np.float32)), ag.constant(t.astype(np.float32)), "sum")
    )()
    want = torch.nn.functional.kl_div(_t(torch, LOGP), _t(torch, t), reduction="sum").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    p = np.array([0.0, 1.0, 0.5], np.float32)
    y = np.array([1.0, 0.0, 1.0], np.float32)
    got = ag.compile(F.binary_cross_entropy(ag.constant(p), ag.constant(y), reduction="none"))()
    want = torch.nn.functional.binary_cross_entropy(_t(torch, p), _t(torch, y), reduction="none").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)  # log clamped at -100: loss 100, not inf


def test_cross_entropy_mean_with_weights_divides_by_the_weights_of_the_targets() -> None:
    logits = np.zeros((3, 2), np.float32)
    y = np.array([0, 1, 1])
    w = np.array([1.0, 3.0], np.float32)
    got = ag.compile(F.cross_entropy(ag.constant(logits), ag.constant(y), ag.constant(w)))()
    # each loss is log 2; weighted mean (1 + 3 + 3) log2 / (1 + 3 + 3) = log 2
    assert float(got) == pytest.approx(np.log(2.0), rel=1e-6)


def test_loss_errors_name_tensors_and_shapes() -> None:
    x, y = ag.input("pred", ("B", 3)), ag.input("target", ("B", 4))
    with pytest.raises(
        ag.ShapeError,
        match=r"mse_loss: input pred \(B, 3\) and target target \(B, 4\) must have the same shape",
    ):
        F.mse_loss(x, y)
    with pytest.raises(
        ValueError, match=r"cross_entropy: reduction must be 'none', 'mean' or 'sum', got 'avg'"
    ):
        F.cross_entropy(x, ag.input("y", ("B",), "int64"), reduction="avg")
    with pytest.raises(ag.ShapeError, match=r"nll_loss: weight .* must have one entry per class, \(3,\)"):
        F.nll_loss(x, ag.input("y", ("B",), "int64"), weight=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="MSELoss: reduction must be"):
        nn.MSELoss("avg")


SIGNS = np.where(rng.random(6) > 0.5, 1.0, -1.0)
A, POS, NEG = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 4))


def _ranking_cases(torch):
    tf = torch.nn.functional
    signs_4 = np.where(rng.random((6, 4)) > 0.5, 1.0, -1.0)
    cases = []
    for r in ("none", "mean", "sum"):
        cases += [
            (f"hinge-{r}", lambda x, y, r=r: F.hinge_embedding_loss(x, y, 0.7, r),
             lambda x, y, r=r: tf.hinge_embedding_loss(x, y, 0.7, reduction=r), [PRED, signs_4]),
            (f"cosine-{r}", lambda a, b, y, r=r: F.cosine_embedding_loss(a, b, y, 0.2, r),
             lambda a, b, y, r=r: tf.cosine_embedding_loss(a, b, y, 0.2, reduction=r), [A, POS, SIGNS]),
            (f"triplet-{r}", lambda a, p, n, r=r: F.triplet_margin_loss(a, p, n, 1.5, reduction=r),
             lambda a, p, n, r=r: tf.triplet_margin_loss(a, p, n, 1.5, reduction=r), [A, POS, NEG]),
            (f"triplet-p1-swap-{r}", lambda a, p, n, r=r: F.triplet_margin_loss(a, p, n, 1.0, 1.0, swap=True, reduction=r),
             lambda a, p, n, r=r: tf.triplet_margin_loss(a, p, n, 1.0, 1.0, swap=True, reduction=r), [A, POS, NEG]),
            (f"ranking-{r}", lambda a, b, y, r=r: F.margin_ranking_loss(a, b, y, 0.3, r),
             lambda a, b, y, r=r: tf.margin_ranking_loss(a, b, y, 0.3, reduction=r), [A[:, 0], POS[:, 0], SIGNS]),
        ]  # fmt: skip
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("index", range(15))
def test_ranking_and_embedding_losses_match_torch(index: int) -> None:
    torch = torch_or_skip()
    _name, ours, theirs, arrays = _ranking_cases(torch)[index]
    agt.check_op(ours, *arrays, torch_fn=theirs, order=1, torch_rtol=1e-5, torch_atol=1e-6)


def _focal_ref(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))


def test_focal_loss_against_torchvision_formula_and_finite_differences() -> None:
    agt.check_op(F.sigmoid_focal_loss, PRED, T01, ref=_focal_ref, order=2)
    agt.check_op(
        lambda x, t: F.sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0, reduction="sum"),
        PRED,
        T01,
        ref=lambda x, t: (
            -(t * np.log(1 / (1 + np.exp(-x))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-x))))
        ).sum(),
        order=1,
    )
    loss = nn.FocalLoss()(ag.constant(PRED.astype(np.float32)), ag.constant(T01.astype(np.float32)))
    assert float(ag.compile(loss)()) == pytest.approx(_focal_ref(PRED, T01).mean(), rel=1e-5)
