"""Tutorial 7: the GPU backend. One argument, backend="wgpu", moves a compiled training step to the GPU.

On a machine without a GPU, Mesa's lavapipe (a software Vulkan driver) runs the same WGSL kernels on the
CPU: correct but slow, and each new kernel is JIT-compiled once. Without any adapter the tutorial prints
the error asg-gpu raises and what to install.
"""

import numpy as np

import asg.core as ag

x = ag.input("x", ("B", 3))
w = ag.parameter(np.ones((3, 2), "float32"), name="w")
b = ag.parameter(np.zeros((1, 2), "float32"), name="b")
loss = ag.relu(x @ w + b).mean()
gw, gb = ag.grad(loss, [w, b])
updates = {w: w - 0.1 * gw, b: b - 0.1 * gb}
print("backends:", ag.available_backends())
try:
    step = ag.compile(loss, updates=updates, backend="wgpu")
    print("loss on wgpu:", float(step(np.ones((4, 3), "float32"))))
except Exception as error:  # NoAdapterError, or wgpu missing: say what happened
    print(f"no GPU backend here: {type(error).__name__}: {str(error).splitlines()[0]}")
else:
    from asg.gpu.device import list_adapters

    print("adapters:", [a.split(" (")[0] for a in list_adapters()][:3])
    print("w after one step:", w.numpy()[0])  # read back on demand

# The same step on numpy gives the same numbers (asg.core.testing checks every op this way).
w2 = ag.parameter(np.ones((3, 2), "float32"), name="w")
b2 = ag.parameter(np.zeros((1, 2), "float32"), name="b")
loss2 = ag.relu(x @ w2 + b2).mean()
g2 = ag.grad(loss2, [w2, b2])
ref = ag.compile(loss2, updates={w2: w2 - 0.1 * g2[0], b2: b2 - 0.1 * g2[1]})
print("loss on numpy:", float(ref(np.ones((4, 3), "float32"))), "w:", w2.numpy()[0])
