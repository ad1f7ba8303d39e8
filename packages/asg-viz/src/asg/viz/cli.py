"""``asg-viz``: open a graph JSON file or function bundle in a window, or export it to PNG/SVG.

asg-viz model.json                      # a window
asg-viz model.json --export graph.svg   # no window: writes the laid-out graph
asg-viz --demo 2 --export gpt.png       # the built-in GPT-like training step (2 blocks)
asg-viz --zoo gpt                       # a zoo model's training graph (needs asg-zoo)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .model import MODES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asg-viz", description="View an ASG graph: forward and gradient, modules, timings."
    )
    p.add_argument("path", nargs="?", help="graph JSON (Graph.to_json) or function bundle (Function.save)")
    p.add_argument(
        "--export", metavar="FILE", help="write the laid-out graph to FILE (.png or .svg) without a window"
    )
    p.add_argument("--mode", choices=MODES, default="both", help="forward, gradient or both (default both)")
    p.add_argument(
        "--expand-all",
        action="store_true",
        help="export with every module expanded (default: as the window opens)",
    )
    p.add_argument("--zoo", metavar="MODEL", help="a zoo model's training graph (needs asg-zoo)")
    p.add_argument(
        "--demo", metavar="N_LAYER", type=int, help="the built-in GPT-like training step with N blocks"
    )
    p.add_argument(
        "--profile", action="store_true", help="with --demo: profile one step and capture its values"
    )
    return p


def _zoo_graph(name: str) -> Any:
    try:
        import asg.zoo as zoo  # optional: only behind --zoo
    except ImportError:
        raise SystemExit(
            "asg-viz: --zoo needs asg-zoo, which is not installed (pip install asg-zoo); "
            "or open a saved graph: asg-viz model.json"
        ) from None
    build = getattr(zoo, "training_graph", None)
    if build is None:
        raise SystemExit(
            "asg-viz: this asg-zoo has no asg.zoo.training_graph(name); save the model's training step "
            "with Function.save(path) and run asg-viz path"
        )
    return build(name)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (0 on success)."""
    args = _parser().parse_args(argv)
    sources = [x for x in (args.path, args.zoo, args.demo) if x is not None]
    if len(sources) != 1:
        _parser().error("give one of: a PATH, --zoo MODEL or --demo N_LAYER")
    from . import RunData, export, load_path
    from .examples import gpt_training_step

    function = None
    inputs: list[Any] = []
    try:
        if args.path is not None:
            graph, function = load_path(args.path)
            obj: Any = graph
        elif args.zoo is not None:
            obj = _zoo_graph(args.zoo)
        else:
            function, inputs = gpt_training_step(n_layer=args.demo)
            obj = function
        if args.export:
            export(obj, args.export, mode=args.mode, expand=args.expand_all)
            print(f"asg-viz: wrote {args.export} ({os.path.getsize(args.export)} bytes)")
            return _quit(0)
        from .qt import application
        from .sources import as_graph
        from .window import Viewer

        app = application()
        run = (
            RunData.collect(function, *inputs) if (args.profile and function is not None and inputs) else None
        )
        window = Viewer(
            as_graph(obj), run=run, mode=args.mode, title=f"asg-viz: {args.path or args.zoo or 'demo'}"
        )
        window.show()
        status = app.exec()
        del window
        return _quit(status)
    except (FileNotFoundError, ValueError) as err:
        print(f"asg-viz: {err}", file=sys.stderr)
        return _quit(2)


def _quit(status: int) -> int:
    """Tear Qt down in order (windows, then their items) so the interpreter exits cleanly."""
    if "PySide6" in sys.modules:
        from .qt import shutdown

        shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
