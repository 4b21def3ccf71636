"""Regenerate docs/tensorboard-two-runs.png: TensorBoard (started by prefect-mltrain) showing
the scalars of two runs side by side.

Like ``ui_screenshot.py``, the picture comes from the real thing: two runs of a small
script that writes TensorBoard logs to ``./logs``, on a throwaway embedded Prefect server
under a scratch MLTRAIN_HOME and PREFECT_HOME, then ``Tensorboard([run1, run2]).start()``
and headless Debian Chromium.

    python docs/tensorboard_screenshot.py [--output PATH] [--dom PATH]   # needs chromium
"""

from __future__ import annotations

import socket
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from ui_screenshot import arguments, chromium, scratch_server, screenshot

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "tensorboard-two-runs.png"
SCRIPT = """
    import argparse, math, time
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float)
    lr = p.parse_args().lr
    writer = EventFileWriter("logs")
    for step in range(60):
        loss = math.exp(-lr * step) + 0.05 * math.sin(step / 3)
        for tag, value in (("loss", loss),):
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                            simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()
"""


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, __doc__, DEFAULT_OUTPUT)
    started = time.monotonic()
    with scratch_server("mltrain-tb-shot-") as (scratch, _):
        from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
        from prefect_mltrain.tensorboard import Tensorboard

        project = scratch / "project"
        project.mkdir()
        (project / "train.py").write_text(textwrap.dedent(SCRIPT))
        exp = Experiment(Workspace(scratch / "ws"), "tensorboard-demo")
        runs = [exp.submit(ScriptRunConfig(source_directory=str(project), script="train.py",
                                           arguments=["--lr", lr])) for lr in (0.05, 0.15)]
        for run, lr in zip(runs, (0.05, 0.15), strict=True):
            run.wait_for_completion(timeout=300)
            run.display_name = f"lr={lr}"  # the run's folder name in TensorBoard
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        board = Tensorboard(runs, port=port)
        url = board.start()
        try:
            deadline = time.monotonic() + 60
            while urllib.request.urlopen(f"{url}data/plugin/scalars/tags",
                                         timeout=10).read().count(b'"loss"') < len(runs):
                if time.monotonic() > deadline:
                    raise RuntimeError("TensorBoard did not load both runs' scalars")
                time.sleep(0.5)
            time.sleep(3)  # its reload finishes before the page asks
            shown = urllib.request.urlopen(f"{url}data/runs", timeout=10).read().decode()
            page = f"{url}#scalars"  # its SVG charts render in headless Chromium (no WebGL)
            screenshot(page, args.output.resolve(), scratch, dark=False)
            if args.dom:
                args.dom.write_text(chromium(page, scratch, "--dump-dom", dark=False).stdout)
        finally:
            board.stop()
    print(f"wrote {args.output} ({time.monotonic() - started:.0f} s) of runs "
          f"{' '.join(r.id for r in runs)} from {url}; TensorBoard's runs: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
