"""Tutorial 1: the graph. Build it, print it, differentiate it twice, compile it, save and load it."""

import os
import tempfile

import numpy as np

import asg.core as ag

# Build: nothing is computed, each operation checks shapes and dtypes and appends a node.
x = ag.input("x", ("B", 3))  # "B" is a symbolic batch dimension
w = ag.parameter(np.array([[1.0], [-2.0], [0.5]], "float32"), name="w")
y = ((x @ w).tanh() ** 2).sum()
print(ag.Graph([y.node]))

# Differentiate: the gradient is made of ordinary nodes ...
(gw,) = ag.grad(y, [w])
print("d y / d w:", gw.shape, gw.dtype)
# ... so it can be differentiated again: the derivative of sum(gw) with respect to w.
(ggw,) = ag.grad(gw.sum(), [w])

# Compile: one plan, specialised to the input shapes when it is first called.
f = ag.compile([y, gw, ggw], inputs=[x])
xs = np.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6]], "float32")
value, grad_w, grad2_w = f(xs)
print("y =", round(float(value), 6))
print("grad =", grad_w.ravel().round(6))
print("second derivative (sum) =", grad2_w.ravel().round(6))

# Check the first derivative against float64 finite differences.
h = 1e-3
num = []
for i in range(3):
    wp, wm = w.numpy().astype("float64"), w.numpy().astype("float64")
    wp[i, 0] += h
    wm[i, 0] -= h
    num.append(((np.tanh(xs @ wp) ** 2).sum() - (np.tanh(xs @ wm) ** 2).sum()) / (2 * h))
print("finite differences agree:", np.allclose(grad_w.ravel(), num, atol=1e-3))

# Save and load: the file holds the optimised graph (JSON) and the parameter values (safetensors).
path = os.path.join(tempfile.mkdtemp(), "f.asg")
f.save(path)
g = ag.load(path)
print("loaded function agrees:", all(np.array_equal(a, b) for a, b in zip(g(xs), f(xs), strict=True)))
print("state:", {k: v.ravel().tolist() for k, v in g.state_dict().items()})
