"""Error messages say what, where and what to do: op, user names, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag


def test_matmul_inner_dimension_message():
    x, w = ag.input("x", ("B", 784)), ag.parameter(np.zeros((128, 10), "float32"), name="w")
    with pytest.raises(ag.ShapeError) as info:
        x @ w
    assert str(info.value) == "matmul: x (B, 784) @ w (128, 10): inner dimensions 784 and 128 differ"


@pytest.mark.parametrize(
    ("op", "symbol"),
    [
        (lambda a, b: a + b, r"\+"),
        (lambda a, b: a - b, "-"),
        (lambda a, b: a * b, r"\*"),
        (lambda a, b: a / b, "/"),
        (lambda a, b: a**b, r"\*\*"),
        (lambda a, b: a < b, "<"),
        (lambda a, b: a == b, "=="),
    ],
)
def test_broadcast_failure_names_both_tensors(op, symbol):
    a, b = ag.input("images", ("B", 3, 32)), ag.input("bias", (16,))
    with pytest.raises(
        ag.ShapeError,
        match=rf"^\w+: images \(B, 3, 32\) {symbol} bias \(16,\): shapes \(B, 3, 32\) "
        r"and \(16,\) do not broadcast: dimension 16 does not broadcast against "
        r"32 \(axis -1\)$",
    ):
        op(a, b)


def test_broadcast_failure_of_functions_and_where():
    a, b = ag.input("a", (2, 3)), ag.input("b", (4, 3))
    with pytest.raises(
        ag.ShapeError,
        match=r"^maximum: a \(2, 3\), b \(4, 3\): shapes \(2, 3\) and \(4, 3\) do not "
        r"broadcast",
    ):
        ag.maximum(a, b)
    with pytest.raises(
        ag.ShapeError,
        match=r"^where: c \(2, 3\) bool, a \(2, 3\) float32, b \(4, 3\) float32: shapes \(2, 3\) and \(2, 3\) and "
        r"\(4, 3\) do not broadcast",
    ):
        ag.where(ag.input("c", (2, 3), "bool"), a, b)


def test_dtype_mismatch_lists_dtypes():
    x, i = ag.input("x", (2,)), ag.input("idx", (2,), "int64")
    with pytest.raises(
        ag.ShapeError, match=r"^matmul: .* float32 @ .* float64: dtypes differ: float32 and float64"
    ):
        ag.input("p", (2, 2)) @ ag.input("q", (2, 2), "float64")
    with pytest.raises(
        ag.ShapeError,
        match=r"^exp: idx \(2,\): expected a floating-point tensor, got int64 \(cast it "
        r"with .astype\('float32'\)\)$",
    ):
        ag.exp(i)
    del x


def test_reshape_and_axis_messages():
    x = ag.input("features", ("B", 6))
    with pytest.raises(
        ag.ShapeError, match=r"^reshape: features \(B, 6\): cannot reshape 6\*B elements into \(B, 4\)"
    ):
        x.reshape("B", 4)
    with pytest.raises(
        ag.ShapeError, match=r"^sum: features \(B, 6\): axis 3 is out of range for a 2-d tensor$"
    ):
        x.sum(axis=3)
    with pytest.raises(
        ag.ShapeError, match=r"^softmax: features \(B, 6\): axis -3 is out of range for a 2-d tensor$"
    ):
        x.softmax(-3)


def test_unnamed_values_are_labelled_by_op_and_id():
    x = ag.input("x", (2, 3))
    h = x * 2.0
    with pytest.raises(ag.ShapeError, match=rf"^matmul: mul_{h.node.id} \(2, 3\) @ w \(2, 3\)"):
        h @ ag.input("w", (2, 3))


def test_feed_shape_errors_name_the_input_and_symbol():
    x, y = ag.input("x", ("B", 3)), ag.input("labels", ("B",), "int64")
    f = ag.compile([x.sum(axis=1) + y.astype("float32")])
    with pytest.raises(
        ag.ShapeError,
        match=r"^input 'labels': dimension B is 5 here but 4 in another input "
        r"\(shape \(5,\) against \(B,\)\)$",
    ):
        f(np.zeros((4, 3), "float32"), np.zeros(5, "int64"))
    with pytest.raises(ag.ShapeError, match=r"^input 'x': expected shape \(B, 3\), got \(4, 2\)$"):
        f(np.zeros((4, 2), "float32"), np.zeros(4, "int64"))
    with pytest.raises(
        ag.ShapeError, match=r"^input 'x': expected a 2-d array of shape \(B, 3\), got shape \(12,\)$"
    ):
        f(np.zeros(12, "float32"), np.zeros(4, "int64"))


def test_feed_dtype_errors():
    x, i, m = ag.input("x", (2,)), ag.input("i", (2,), "int32"), ag.input("m", (2,), "bool")
    f = ag.compile([x * 2.0, i + 1, ~m])
    with pytest.raises(ag.ShapeError, match=r"^input 'i' expects int32, got an array of float64$"):
        f(np.zeros(2), np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ag.ShapeError, match=r"^input 'm' expects bool, got an array of int64$"):
        f(np.zeros(2), np.zeros(2, "int32"), np.zeros(2, "int64"))
    with pytest.raises(ag.ShapeError, match=r"^input 'x' expects float32, got an array of <U1$"):
        f(np.array(["a", "b"]), np.zeros(2, "int32"), np.zeros(2, bool))
    # Lossless or numeric conversions are accepted: ints and float64 into a float32 input.
    out = f(np.array([1, 2]), np.array([1, 2], "int64"), np.array([True, False]))
    assert out[0].dtype == np.float32 and out[1].dtype == np.int32


def test_feed_count_and_name_errors():
    x, y = ag.input("x", (2,)), ag.input("y", (2,))
    f = ag.compile(x + y)
    with pytest.raises(TypeError, match=r"missing input 'y' \(2,\) float32"):
        f(np.zeros(2))
    with pytest.raises(TypeError, match=r"expected at most 2 inputs \(x, y\), got 3"):
        f(np.zeros(2), np.zeros(2), np.zeros(2))
    with pytest.raises(TypeError, match=r"unknown input 'z'; inputs are x, y"):
        f(np.zeros(2), z=np.zeros(2))
    with pytest.raises(TypeError, match=r"input 'x' given twice"):
        f(np.zeros(2), x=np.zeros(2))


def test_compile_errors():
    x, y = ag.input("x", (2,)), ag.input("y", (2,))
    with pytest.raises(ValueError, match=r"compile: the outputs depend on inputs not listed in inputs=: y"):
        ag.compile(x + y, inputs=[x])
    with pytest.raises(TypeError, match=r"compile: outputs must be Tensors, got ndarray"):
        ag.compile([np.zeros(2)])
    with pytest.raises(TypeError, match=r"compile: inputs= must list tensors made by ag.input\(\)"):
        ag.compile(x + y, inputs=[x, y * 2.0])
    w = ag.parameter(np.zeros(2, "float32"), name="w")
    with pytest.raises(
        ag.ShapeError,
        match=r"compile: update of w \(2,\) float32 has type \(2,\) float64; it must "
        r"match exactly",
    ):
        ag.compile(x, updates={w: ag.cast(w, "float64")})
    with pytest.raises(TypeError, match=r"compile: updates= keys must be parameters"):
        ag.compile(x, updates={x: x})
    with pytest.raises(ValueError, match=r"no backend named 'nonexistent'"):
        ag.compile(x, backend="nonexistent")


def test_runtime_kernel_failure_is_wrapped_with_the_node_printout():
    table, idx = ag.input("table", (4, 2)), ag.input("idx", ("N",), "int64")
    rows = ag.index_select(table, idx, 0).named("rows")
    f = ag.compile(rows * 2.0)
    np.testing.assert_array_equal(f(np.ones((4, 2), "float32"), np.array([3, 0])), 2 * np.ones((2, 2)))
    with pytest.raises(ag.ExecutionError) as info:
        f(np.ones((4, 2), "float32"), np.array([1, 7]))
    message = str(info.value)
    assert message.startswith(
        "while executing rows:f32[N,2] = index_select[axis=0] table idx"
    ) or message.startswith("while executing rows:f32[N,2] = index_select table idx"), message
    assert (
        "IndexError: index_select: index 7 is out of range for axis 0 of size 4 (valid: -4 to 3)" in message
    )
    assert "built at" in message and "test_errors.py" in message
    # The plan stays usable after a failure.
    np.testing.assert_array_equal(f(np.ones((4, 2), "float32"), np.array([0])), 2 * np.ones((1, 2)))


def test_truth_value_and_len_of_tensors():
    x = ag.input("x", ("B", 3))
    with pytest.raises(
        TypeError,
        match=r"the truth value of tensor x \(B, 3\) is not known while the graph is built; "
        r"use ag.where",
    ):
        bool(x)
    with pytest.raises(TypeError, match="its first dimension 'B' is symbolic"):
        len(x)
    assert len(ag.input("y", (5, 2))) == 5
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(ag.input("s", ()))


def test_values_of_non_leaves_and_bad_assignments():
    x = ag.input("x", (2,))
    with pytest.raises(ValueError, match=r"tensor x is computed by op 'input'; compile and run the graph"):
        x.numpy()
    w = ag.parameter(np.zeros((2, 2), "float32"), name="w")
    with pytest.raises(
        ValueError, match=r"assign to w: shape \(3,\) does not match the parameter's \(2, 2\)"
    ):
        w.assign(np.zeros(3))
    with pytest.raises(ValueError, match=r"only parameters can be assigned; x is a 'input' node"):
        x.assign(np.zeros(2))
    with pytest.raises(TypeError, match="cannot use a str as a tensor"):
        x + "a"
    with pytest.raises(TypeError, match=r"unsupported dtype 'complex64'"):
        ag.input("z", (2,), "complex64")
    with pytest.raises(ValueError, match="an input needs a non-empty name"):
        ag.input("", (2,))
    with pytest.raises(KeyError, match=r"no op named 'no_such_op' is registered"):
        ag.apply("no_such_op", x)
    with pytest.raises(ValueError, match=r"op 'add' is already defined"):
        ag.define_op("add", infer=lambda a, b: a, kernel=np.add)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ag.exp(ag.input("i", (3,), "int64")),
            r"^exp: i \(3,\): expected a floating-point tensor, got int64",
        ),
        (
            lambda: ag.where(ag.input("c", (3,)), 1.0, 0.0),
            r"^where: .*the condition must be a bool tensor, got float32 \(compare first, e\.g\. x > 0\)$",
        ),
        (
            lambda: ag.input("a", (3,)) & ag.input("b", (3,), "bool"),
            r"^logical_and: a \(3,\) float32 & b \(3,\) bool: expected bool tensors, got float32",
        ),
        (
            lambda: ag.index_select(ag.input("x", (3, 2)), ag.input("i", (2,)), 0),
            r"^index_select: x \(3, 2\), i \(2,\): indices must be int32 or int64, got float32$",
        ),
        (
            lambda: ag.input("x", (2, 3)) @ ag.input("w", (3, 4), "float64"),
            r"^matmul: x \(2, 3\) float32 @ w \(3, 4\) float64: dtypes differ: float32 and float64",
        ),
        (lambda: ag.mean(ag.input("n", (4,), "int32")), r"^mean: n \(4,\): expected a floating-point tensor"),
        (lambda: -ag.input("flag", (2,), "bool"), r"^neg: flag \(2,\): cannot negate a bool tensor"),
    ],
    ids=["exp", "where", "logical_and", "index_select", "matmul", "mean", "neg"],
)
def test_dtype_mistakes_raise_dtype_error(build, message):
    with pytest.raises(ag.DTypeError, match=message) as info:
        build()
    assert isinstance(info.value, ag.ShapeError)  # existing handlers of ShapeError still catch it


def test_shape_mistakes_stay_plain_shape_errors():
    with pytest.raises(ag.ShapeError) as info:
        ag.input("a", (2, 3)) + ag.input("b", (4,))
    assert not isinstance(info.value, ag.DTypeError)
