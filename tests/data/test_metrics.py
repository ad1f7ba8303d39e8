"""Tests for asg.data.metrics: hand-computed cases for every metric, the stateful objects against the
functions, and (where scikit-learn is installed) against scikit-learn."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from asg.data.metrics import (
    EMA,
    F1,
    MAE,
    MAPE,
    MSE,
    R2,
    RMSE,
    Accuracy,
    ConfusionMatrix,
    EarlyStopping,
    ExplainedVariance,
    MaxError,
    MetricLogger,
    Precision,
    Recall,
    RunningMean,
    RunningStd,
    TopKAccuracy,
    accuracy,
    confusion_matrix,
    explained_variance,
    f1,
    format_confusion_matrix,
    mae,
    mape,
    max_error,
    mse,
    precision,
    r2,
    recall,
    rmse,
    top_k_accuracy,
)

# A small multiclass case, counted by hand:
#   true: 0 0 0 1 1 2 2 2 2 2
#   pred: 0 1 0 1 2 2 2 0 2 1
# confusion (rows true, cols pred): [[2,1,0],[0,1,1],[1,1,3]]
# class 0: tp 2, pred 3, support 3 -> P 2/3, R 2/3, F1 2/3
# class 1: tp 1, pred 3, support 2 -> P 1/3, R 1/2, F1 2/5
# class 2: tp 3, pred 4, support 5 -> P 3/4, R 3/5, F1 2/3
MC_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
MC_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]
P_CLS = np.array([2 / 3, 1 / 3, 3 / 4])
R_CLS = np.array([2 / 3, 1 / 2, 3 / 5])
F_CLS = np.array([2 / 3, 2 / 5, 2 / 3])
SUPPORT = np.array([3, 2, 5])

# Binary: true 1 1 1 1 0 0 0 0 0 0 / pred 1 1 1 0 1 1 0 0 0 0 -> tp 3, fn 1, fp 2, tn 4
BIN_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BIN_PRED = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------------
# Classification: hand-computed


def test_accuracy_hand_computed_and_inputs():
    assert accuracy(MC_TRUE, MC_PRED) == 0.6
    assert accuracy(BIN_TRUE, BIN_PRED) == 0.7
    assert accuracy(["a", "b", "b"], ["a", "b", "a"]) == pytest.approx(2 / 3)
    scores = [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]]
    assert accuracy([0, 1, 2, 1], scores) == 0.75  # (N, C) scores reduced by argmax
    assert accuracy([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]) == 0.5  # probabilities thresholded at 0.5
    assert accuracy([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], threshold=0.3) == 0.75
    assert accuracy([[1], [0]], [[1], [1]]) == 0.5  # column vectors


def test_confusion_matrix_hand_computed_and_normalized():
    cm = confusion_matrix(MC_TRUE, MC_PRED)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 1, 3]])
    assert cm.dtype == np.int64
    np.testing.assert_allclose(confusion_matrix(MC_TRUE, MC_PRED, normalize="true").sum(axis=1), 1.0)
    np.testing.assert_allclose(confusion_matrix(MC_TRUE, MC_PRED, normalize="pred")[:, 1], [1 / 3] * 3)
    assert confusion_matrix(MC_TRUE, MC_PRED, normalize="all").sum() == pytest.approx(1.0)
    # explicit label order, including a class that never occurs
    cm = confusion_matrix(["b", "a"], ["a", "a"], labels=["b", "a", "z"])
    np.testing.assert_array_equal(cm, [[0, 1, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(BIN_TRUE, BIN_PRED), [[4, 2], [1, 3]])
    with pytest.raises(ValueError, match="y_pred contains the label 'q'"):
        confusion_matrix(["a"], ["q"], labels=["a", "b"])
    with pytest.raises(ValueError, match="normalize must be"):
        confusion_matrix([0], [0], normalize="rows")  # type: ignore[arg-type]


def test_precision_recall_f1_binary_hand_computed():
    assert precision(BIN_TRUE, BIN_PRED) == pytest.approx(3 / 5)
    assert recall(BIN_TRUE, BIN_PRED) == pytest.approx(3 / 4)
    assert f1(BIN_TRUE, BIN_PRED) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # pos_label=0: tp 4, fp 1, fn 2
    assert precision(BIN_TRUE, BIN_PRED, pos_label=0) == pytest.approx(4 / 5)
    assert recall(BIN_TRUE, BIN_PRED, pos_label=0) == pytest.approx(4 / 6)
    # string labels
    assert precision(["spam", "ham", "spam"], ["spam", "spam", "spam"], pos_label="spam") == pytest.approx(
        2 / 3
    )


def test_precision_recall_f1_averages_hand_computed():
    for fn, per in ((precision, P_CLS), (recall, R_CLS), (f1, F_CLS)):
        np.testing.assert_allclose(fn(MC_TRUE, MC_PRED, average=None), per)
        assert fn(MC_TRUE, MC_PRED, average="macro") == pytest.approx(per.mean())
        assert fn(MC_TRUE, MC_PRED, average="weighted") == pytest.approx((per * SUPPORT).sum() / 10)
        assert fn(MC_TRUE, MC_PRED, average="micro") == pytest.approx(0.6)  # = accuracy here


def test_zero_division_and_degenerate_cases():
    # no predicted positives: precision is 0/0 -> zero_division
    assert precision([1, 0], [0, 0]) == 0.0
    assert precision([1, 0], [0, 0], zero_division=1.0) == 1.0
    assert recall([0, 0], [1, 0]) == 0.0  # no true positives in the data
    assert f1([0, 0], [0, 0]) == 0.0
    assert f1([0, 0], [0, 0], zero_division=1.0) == 1.0
    # a class listed in labels but absent contributes zero_division to the macro average
    assert recall([0, 1], [0, 1], labels=[0, 1, 2], average="macro") == pytest.approx(2 / 3)


def test_classification_errors_name_metric_and_shapes():
    with pytest.raises(
        ValueError, match=r"precision: y_true and y_pred must have the same shape.*\(3,\).*\(2,\)"
    ):
        precision([0, 1, 1], [0, 1])
    with pytest.raises(
        ValueError, match=r"accuracy: empty input \(y_true shape \(0,\), y_pred shape \(0,\)\)"
    ):
        accuracy([], [])
    with pytest.raises(ValueError, match=r"recall: average='binary' needs at most 2 classes, got 3"):
        recall(MC_TRUE, MC_PRED)
    with pytest.raises(ValueError, match="average must be one of"):
        f1(MC_TRUE, MC_PRED, average="samples")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pos_label=1 is not one of the labels"):
        f1(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match=r"f1: y_pred scores of shape \(N, C\) need the same N"):
        f1([0, 1], np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"y_true must be 1-D"):
        accuracy(np.zeros((2, 2)), np.zeros((2, 2)))


def test_top_k_accuracy_hand_computed():
    scores = np.array(
        [
            [0.1, 0.6, 0.3],  # true 2: rank 2
            [0.5, 0.4, 0.1],  # true 0: rank 1
            [0.2, 0.3, 0.5],  # true 0: rank 3
            [0.4, 0.4, 0.2],  # true 1: tied for first
        ]
    )
    y = [2, 0, 0, 1]
    assert top_k_accuracy(y, scores, k=1) == 0.5
    assert top_k_accuracy(y, scores, k=2) == 0.75
    assert top_k_accuracy(y, scores, k=3) == 1.0
    assert top_k_accuracy(y, scores, k=10) == 1.0
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        top_k_accuracy(y, scores, k=0)
    with pytest.raises(ValueError, match=r"y_true shape \(2,\), y_score shape \(4, 3\)"):
        top_k_accuracy([0, 1], scores)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        top_k_accuracy([0, 1, 2, 3], scores)


def test_format_confusion_matrix():
    text = format_confusion_matrix([[12, 3], [0, 7]], ["cat", "dog"])
    assert text.splitlines() == [
        "true \\ pred  cat  dog",
        "        cat   12    3",
        "        dog    0    7",
    ]
    text = format_confusion_matrix(np.array([[0.5, 0.5], [0.25, 0.75]]))
    assert text.splitlines()[1].split() == ["0", "0.50", "0.50"]
    with pytest.raises(ValueError, match="square"):
        format_confusion_matrix(np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------
# Classification: stateful objects


def _batches(*arrays, sizes=(3, 1, 4, 2)):
    start = 0
    for s in sizes:
        yield tuple(np.asarray(a)[start : start + s] for a in arrays)
        start += s


def test_stateful_classification_equals_functions_on_concatenated_batches():
    for cls, fn in ((Precision, precision), (Recall, recall), (F1, f1)):
        for average in ("macro", "micro", "weighted", None):
            m = cls(average=average)
            for t, p in _batches(MC_TRUE, MC_PRED):
                m.update(t, p)
            np.testing.assert_allclose(m.compute(), fn(MC_TRUE, MC_PRED, average=average))
    b = F1()
    for t, p in _batches(BIN_TRUE, BIN_PRED):
        b.update(t, p)
    assert b.compute() == pytest.approx(f1(BIN_TRUE, BIN_PRED))
    a = Accuracy()
    for t, p in _batches(MC_TRUE, MC_PRED):
        a.update(t, p)
    assert a.compute() == 0.6 and (a.correct, a.total) == (6, 10)
    a.reset()
    with pytest.raises(ValueError, match=r"Accuracy.compute\(\): no samples yet"):
        a.compute()


def test_stateful_labels_seen_in_later_batches_and_num_classes():
    m = ConfusionMatrix()
    m.update([0, 0], [0, 0])
    m.update([2], [1])  # new labels appear later
    np.testing.assert_array_equal(m.compute(), [[2, 0, 0], [0, 0, 0], [0, 1, 0]])
    assert m.labels.tolist() == [0, 1, 2]
    fixed = Recall(average="macro", num_classes=4)
    fixed.update([0, 1], [0, 1])
    assert fixed.compute() == pytest.approx(0.5)  # classes 2 and 3 count with zero_division=0
    with pytest.raises(ValueError, match="y_true contains the label 7"):
        fixed.update([7], [0])
    with pytest.raises(ValueError, match="labels or num_classes, not both"):
        ConfusionMatrix(labels=[0, 1], num_classes=2)


def test_confusion_matrix_object_text_rendering():
    m = ConfusionMatrix(labels=["cat", "dog", "emu"])
    assert str(m) == "ConfusionMatrix(empty)"
    m.update(["cat", "dog", "emu", "emu"], ["cat", "cat", "emu", "dog"])
    m.update(["cat"], ["cat"])
    assert m.total == 5
    assert str(m).splitlines() == [
        "true \\ pred  cat  dog  emu",
        "        cat    2    0    0",
        "        dog    1    0    0",
        "        emu    0    1    1",
    ]
    mn = ConfusionMatrix(normalize="true")
    mn.update([0, 0, 1], [0, 1, 1])
    np.testing.assert_allclose(mn.compute(), [[0.5, 0.5], [0.0, 1.0]])
    assert "0.50" in mn.render()


def test_top_k_accuracy_object():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 10))
    y = rng.integers(0, 10, size=50)
    m = TopKAccuracy(k=3)
    for t, s in _batches(y, scores, sizes=(20, 20, 10)):
        m.update(t, s)
    assert m.compute() == pytest.approx(top_k_accuracy(y, scores, k=3))
    m1 = TopKAccuracy(k=1)
    m1.update(y, scores)
    assert m1.compute() == pytest.approx(accuracy(y, scores))


# ------------------------------------------------------------------------------------------------
# Regression: hand-computed

Y = [3.0, -0.5, 2.0, 7.0]
P = [2.5, 0.0, 2.0, 8.0]
# errors: 0.5, -0.5, 0, -1 -> squared .25 .25 0 1 (sum 1.5), abs .5 .5 0 1 (sum 2)
# mean(Y) = 2.875, SS_tot = 0.015625 + 11.390625 + 0.765625 + 17.015625 = 29.1875


def test_regression_hand_computed():
    assert mse(Y, P) == pytest.approx(0.375)
    assert rmse(Y, P) == pytest.approx(math.sqrt(0.375))
    assert mae(Y, P) == pytest.approx(0.5)
    assert max_error(Y, P) == pytest.approx(1.0)
    assert r2(Y, P) == pytest.approx(1 - 1.5 / 29.1875)
    # errors e = (0.5, -0.5, 0, -1): mean -0.25, var = (0.5625+0.0625+0.0625+0.5625)/4 = 0.3125
    assert explained_variance(Y, P) == pytest.approx(1 - 0.3125 / (29.1875 / 4))
    assert mape([100.0, 200.0, 50.0], [110.0, 150.0, 50.0]) == pytest.approx((0.1 + 0.25 + 0.0) / 3)
    assert explained_variance([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == 1.0  # a constant bias is ignored
    assert r2([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(1 - 3 / 2)


def test_regression_constant_target_conventions():
    assert r2([2.0, 2.0], [2.0, 2.0]) == 1.0
    assert r2([2.0, 2.0], [1.0, 2.0]) == 0.0
    assert explained_variance([2.0, 2.0], [2.0, 2.0]) == 1.0
    assert mape([0.0], [1.0]) == pytest.approx(1 / np.finfo(np.float64).eps)  # eps floor, no inf


def test_regression_multioutput():
    yt = np.array([[0.5, 1.0], [-1.0, 1.0], [7.0, -6.0]])
    yp = np.array([[0.0, 2.0], [-1.0, 2.0], [8.0, -5.0]])
    raw = mse(yt, yp, multioutput="raw_values")
    np.testing.assert_allclose(raw, [(0.25 + 0 + 1) / 3, 1.0])
    assert mse(yt, yp) == pytest.approx(raw.mean())
    np.testing.assert_allclose(rmse(yt, yp, multioutput="raw_values"), np.sqrt(raw))
    assert rmse(yt, yp) == pytest.approx(np.sqrt(raw).mean())  # average of per-output RMSE
    np.testing.assert_allclose(max_error(yt, yp, multioutput="raw_values"), [1.0, 1.0])
    assert r2(yt, yp, multioutput="raw_values").shape == (2,)
    with pytest.raises(ValueError, match="multioutput must be"):
        mse(yt, yp, multioutput="variance_weighted")  # type: ignore[arg-type]


def test_regression_errors_name_metric_and_shapes():
    with pytest.raises(
        ValueError,
        match=r"mse: y_true and y_pred must have the same shape; got y_true shape \(3,\), y_pred shape \(2,\)",
    ):
        mse([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"r2: empty input"):
        r2([], [])
    with pytest.raises(ValueError, match=r"MAE.update: y_true and y_pred must have the same shape"):
        MAE().update([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"RMSE.compute\(\): no samples yet"):
        RMSE().compute()
    m = MSE()
    m.update([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="has seen 1 output"):
        m.update([[1.0, 2.0]], [[1.0, 2.0]])


def test_stateful_regression_equals_functions_on_batches():
    rng = np.random.default_rng(1)
    yt = rng.normal(1000.0, 3.0, size=(10, 3))  # large offset: the moment merging must stay stable
    yp = yt + rng.normal(0.5, 1.0, size=(10, 3))
    for cls, fn in (
        (MSE, mse),
        (RMSE, rmse),
        (MAE, mae),
        (MAPE, mape),
        (R2, r2),
        (ExplainedVariance, explained_variance),
        (MaxError, max_error),
    ):
        for mo in ("uniform_average", "raw_values"):
            m = cls(multioutput=mo)
            for t, p in _batches(yt, yp):
                m.update(t, p)
            np.testing.assert_allclose(
                m.compute(), fn(yt, yp, multioutput=mo), rtol=1e-10, err_msg=cls.__name__
            )
        m.reset()
        m.update(yt[:, 0], yp[:, 0])  # 1-D after reset
        assert m.compute() == pytest.approx(fn(yt[:, 0], yp[:, 0]), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# Against scikit-learn


def test_classification_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(42)
    for n_classes in (2, 3, 7):
        y = rng.integers(0, n_classes, size=300)
        p = np.where(rng.random(300) < 0.6, y, rng.integers(0, n_classes, size=300))
        assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
        np.testing.assert_array_equal(confusion_matrix(y, p), skm.confusion_matrix(y, p))
        for norm in ("true", "pred", "all"):
            np.testing.assert_allclose(
                confusion_matrix(y, p, normalize=norm), skm.confusion_matrix(y, p, normalize=norm)
            )
        averages = ["macro", "micro", "weighted", None] + (["binary"] if n_classes == 2 else [])
        for average in averages:
            kw = {"average": average, "zero_division": 0.0}
            np.testing.assert_allclose(precision(y, p, **kw), skm.precision_score(y, p, **kw))
            np.testing.assert_allclose(recall(y, p, **kw), skm.recall_score(y, p, **kw))
            np.testing.assert_allclose(f1(y, p, **kw), skm.f1_score(y, p, **kw))
    # a class that is never predicted (zero division in precision)
    y, p = [0, 1, 2, 2], [0, 0, 2, 2]
    for average in ("macro", "weighted"):
        assert precision(y, p, average=average) == pytest.approx(
            skm.precision_score(y, p, average=average, zero_division=0.0)
        )


def test_top_k_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = rng.random((200, 6))  # continuous: no ties
    y = rng.integers(0, 6, size=200)
    for k in (1, 2, 5):
        assert top_k_accuracy(y, scores, k=k) == pytest.approx(
            skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(6))
        )


def test_regression_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    yt = rng.normal(size=(100, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    yp = yt + rng.normal(scale=0.5, size=(100, 3))
    pairs = [
        (mse, skm.mean_squared_error),
        (rmse, skm.root_mean_squared_error),
        (mae, skm.mean_absolute_error),
        (mape, skm.mean_absolute_percentage_error),
        (r2, skm.r2_score),
        (explained_variance, skm.explained_variance_score),
    ]
    for ours, theirs in pairs:
        for mo in ("uniform_average", "raw_values"):
            np.testing.assert_allclose(
                ours(yt, yp, multioutput=mo), theirs(yt, yp, multioutput=mo), rtol=1e-10
            )
        np.testing.assert_allclose(ours(yt[:, 1], yp[:, 1]), theirs(yt[:, 1], yp[:, 1]), rtol=1e-10)
    assert max_error(yt[:, 0], yp[:, 0]) == pytest.approx(skm.max_error(yt[:, 0], yp[:, 0]))
    assert r2([2.0, 2.0], [1.0, 2.0]) == skm.r2_score([2.0, 2.0], [1.0, 2.0])


# ------------------------------------------------------------------------------------------------
# Running statistics


def test_running_mean():
    m = RunningMean()
    m.update(2.0, weight=3)  # a batch mean over 3 samples
    m.update([4.0, 6.0])
    assert m.compute() == pytest.approx((6 + 4 + 6) / 5) and m.count == 5
    m.reset()
    with pytest.raises(ValueError, match=r"RunningMean.compute\(\): no values yet"):
        m.compute()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        m.update(1.0, weight=-1)


def test_running_std_welford_matches_numpy():
    data = np.array([2, 4, 4, 4, 5, 5, 7, 9], dtype=np.float64)
    s = RunningStd()
    for x in data:
        s.update(x)
    assert s.mean == 5.0 and s.compute() == 2.0 and s.count == 8
    assert s.std(ddof=1) == pytest.approx(np.std(data, ddof=1))
    # batches of vectors with a large offset: Chan merging stays accurate
    rng = np.random.default_rng(0)
    x = 1e9 + rng.normal(size=(1000, 3))
    b = RunningStd(ddof=1)
    for chunk in np.array_split(x, 7):
        b.update(chunk)
    np.testing.assert_allclose(b.mean, x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(b.compute(), x.std(axis=0, ddof=1), rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"samples of shape \(2,\) do not match earlier samples of shape \(3,\)"
    ):
        b.update(np.zeros((4, 2)))
    one = RunningStd(ddof=1)
    one.update(1.0)
    with pytest.raises(ValueError, match="need more than 1 sample"):
        one.compute()


def test_ema():
    e = EMA(decay=0.5)
    assert [e.update(v) for v in (4.0, 0.0, 0.0)] == [4.0, 2.0, 1.0]
    d = EMA(decay=0.9, debias=True)
    assert d.update(10.0) == pytest.approx(10.0)  # debiased: the first value exactly
    assert d.update(10.0) == pytest.approx(10.0)
    v = EMA(decay=0.5)
    v.update(np.array([2.0, 4.0]))
    np.testing.assert_allclose(v.update(np.array([0.0, 0.0])), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="no values yet"):
        EMA().compute()


# ------------------------------------------------------------------------------------------------
# MetricLogger


def test_metric_logger_epochs_and_exports(tmp_path):
    log = MetricLogger()
    log.update(n=3, loss=1.0, acc=np.float32(0.5))
    log.update(n=1, loss=2.0, acc=1.0)
    row = log.end_epoch(val_loss=np.array(0.9))
    assert row == {"epoch": 0, "loss": 1.25, "acc": 0.625, "val_loss": pytest.approx(0.9)}
    log.update(loss=0.5)
    log.end_epoch(val_loss=float("nan"), lr=1e-3)
    assert len(log) == 2 and log.keys == ["loss", "acc", "val_loss", "lr"]
    assert log["loss"] == [1.25, 0.5] and log["acc"] == [0.625, None]
    assert log.best("loss") == (1, 0.5) and log.best("val_loss") == (0, pytest.approx(0.9))
    with pytest.raises(KeyError, match="no metric 'f1'"):
        log["f1"]

    log.to_csv(tmp_path / "h.csv")
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert list(rows[0]) == ["epoch", "loss", "acc", "val_loss", "lr"]
    assert rows[0]["loss"] == "1.25" and rows[1]["acc"] == "" and rows[1]["val_loss"] == "nan"
    assert float(rows[1]["lr"]) == 1e-3

    log.to_json(tmp_path / "h.json")
    d = json.loads((tmp_path / "h.json").read_text())  # strict JSON: NaN written as a string
    assert d["history"][1]["val_loss"] == "NaN"
    back = MetricLogger.from_json(tmp_path / "h.json")
    assert back["loss"] == [1.25, 0.5] and math.isnan(back["val_loss"][1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "h.json"]  # no temp files left


def test_metric_logger_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    import os

    log = MetricLogger()
    log.log(loss=1.0)
    target = tmp_path / "h.json"
    log.to_json(target)
    before = target.read_text()
    log.log(loss=0.5)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        log.to_json(target)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]  # the temp file was removed


# ------------------------------------------------------------------------------------------------
# EarlyStopping


def test_early_stopping_patience_and_restore_dict():
    es = EarlyStopping(patience=2)
    state = {"w": np.zeros(3), "step": 0}
    losses = [1.0, 0.8, 0.85, 0.9, 0.7]
    stops = []
    for epoch, loss in enumerate(losses):
        state["w"] += 1
        state["step"] = epoch
        stops.append(es.step(loss, state=state))
        if stops[-1]:
            break
    assert stops == [False, False, False, True]
    assert (es.best, es.best_step, es.stopped_step, es.wait) == (0.8, 1, 3, 2)
    w_ref = state["w"]
    best = es.restore(into=state)
    np.testing.assert_array_equal(best["w"], [2.0, 2.0, 2.0])
    assert state["w"] is w_ref  # arrays overwritten in place
    np.testing.assert_array_equal(w_ref, [2.0, 2.0, 2.0])
    assert state["step"] == 1
    best["w"][:] = -1  # callers get copies
    np.testing.assert_array_equal(es.best_state["w"], [2.0, 2.0, 2.0])


def test_early_stopping_min_delta_mode_max_and_callable_state():
    calls = []

    def snapshot():
        calls.append(len(calls))
        return {"v": np.array([len(calls)])}

    es = EarlyStopping(patience=3, min_delta=0.01, mode="max")
    for acc in (0.50, 0.505, 0.52, 0.525, 0.529):  # +0.005 and the last two don't beat by > 0.01
        es.step(acc, state=snapshot)
    assert es.best == 0.52 and es.best_step == 2 and es.wait == 2 and not es.should_stop
    assert len(calls) == 2  # the callable is called only on improvement
    loaded = []
    es.restore(into=loaded.append)
    assert loaded[0]["v"].tolist() == [2]
    assert es.step(float("nan")) is True  # NaN never improves


def test_early_stopping_errors():
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        EarlyStopping(min_delta=-0.1)
    es = EarlyStopping()
    es.step(1.0)
    with pytest.raises(ValueError, match="no state recorded"):
        es.restore()
    no_copy = EarlyStopping(restore_best=False)
    no_copy.step(1.0, state={"w": np.zeros(1)})
    assert no_copy.best_state is None
    with pytest.raises(ValueError, match="restore_best=False"):
        no_copy.restore()
    with pytest.raises(TypeError, match="dict of arrays"):
        EarlyStopping().step(1.0, state=[1, 2])  # type: ignore[arg-type]


def test_docstring_examples_run():
    import doctest

    import asg.data.metrics

    result = doctest.testmod(asg.data.metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 30 and result.failed == 0


def test_metric_logger_from_json_field_errors_name_the_file(tmp_path):
    path = tmp_path / "h.json"
    where = f"MetricLogger.from_json: {str(path)!r}"
    missing = {"format": "asg.MetricLogger", "version": 1}
    not_an_object = {"format": "asg.MetricLogger", "history": [{"loss": 1.0}, 3]}
    for d, message in [
        (missing, f"{where}: field 'history' is missing; expected an array of per-epoch objects"),
        (not_an_object, f"{where}: field 'history'[1] must be an object metric -> value, got 3"),
    ]:
        path.write_text(json.dumps(d))
        with pytest.raises(ValueError) as info:
            MetricLogger.from_json(path)
        assert str(info.value) == message
