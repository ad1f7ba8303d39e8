"""Tutorial 6: the profiler and the viewer, on a small GPT training step.

`Function.profile` times one step per node; the viewer (asg-viz) draws the forward and backward graph.
`asg.viz.export` lays the graph out and paints it with Qt's offscreen platform, so no display is needed;
the picture on this page is written by this script (to $ASG_DOCS_OUT, default the current folder).
"""

import os
from pathlib import Path

from asg.viz import export
from asg.viz.examples import gpt_training_step

step, feeds = gpt_training_step(n_layer=1)  # a compiled GPT training step and one batch
profile = step.profile(*feeds)  # one step, timed per node; parameters are not updated
ops = sorted({t.op for t in profile.nodes})
print(
    f"{len(profile.nodes)} timed nodes, {len(ops)} distinct ops; peak memory {profile.memory.peak_bytes} bytes"
)
slowest = max(profile.nodes, key=lambda t: t.seconds)
print(f"slowest node: {slowest.op} in scope {slowest.scope!r}")

out = Path(os.environ.get("ASG_DOCS_OUT", "."))
out.mkdir(parents=True, exist_ok=True)
export(step, str(out / "gpt_step.png"), mode="both")
print("wrote gpt_step.png:", (out / "gpt_step.png").stat().st_size > 10_000)
