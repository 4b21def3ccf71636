"""Regenerate docs/prefect-ui-run.png: the Prefect UI showing a finished demo run and its artifacts.

Why a script rather than a hand-made screenshot: the picture stays true to what a user gets. It
runs the bundled demo (`mltrain demo`) on a throwaway embedded Prefect server under a scratch
MLTRAIN_HOME and PREFECT_HOME, so your runs, server and ~/.prefect are left alone, then takes
the screenshot with headless Debian Chromium.

It photographs the V2 UI's flow run page on its Artifacts tab. The default (V1) UI cannot link
to that tab: it hides the tab until the run has loaded and meanwhile resets `?tab=` to Logs.

    python docs/ui_screenshot.py [--output PATH] [--dom PATH]   # needs: apt-get install -y chromium

``--dom`` also writes the page as the browser rendered it (its DOM), for checks of its text.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1400, 1000
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "prefect-ui-run.png"


def run_demo(scratch: Path) -> tuple[str, str]:
    """Run the bundled demo to completion; return its run id and Prefect flow run id."""
    import prefect_mltrain
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    project = scratch / "mltrain-demo"
    project.mkdir()
    shutil.copy(Path(prefect_mltrain.__file__).parent / "demo" / "train.py", project)
    config = ScriptRunConfig(source_directory=str(project), script="train.py",
                             arguments=["--alpha", "0.1"])
    run = Experiment(Workspace(scratch / "ws"), "demo").submit(config, tags={"kind": "ridge"})
    return run.id, run.wait_for_completion(timeout=300)["flow_run_id"]


def wait_for_flow_run(flow_run_id: str, timeout: float = 60) -> int:
    """Wait until Prefect has the flow run in a final state (it lags the run record a little)
    and it has artifacts; return how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            artifacts = client.read_artifacts(artifact_filter=only_this_run)
            if state and state.is_final() and artifacts:
                return len(artifacts)
            if time.monotonic() > deadline:
                raise RuntimeError(f"flow run {flow_run_id} not final with artifacts: {state}")
            time.sleep(0.5)


def chromium(url: str, scratch: Path, *action: str, dark: bool = True) -> subprocess.CompletedProcess:
    """Headless Chromium; the virtual time budget lets the single-page app fetch and render.
    Dark: the Prefect run graph's labels are unreadable on the light theme."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={scratch / 'chromium-profile'}",
           "--hide-scrollbars", *(["--force-dark-mode"] if dark else []),
           f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=15000", *action, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def screenshot(url: str, output: Path, scratch: Path, dark: bool = True) -> None:
    shot = scratch / "shot.png"
    chromium(url, scratch, f"--screenshot={shot}", dark=dark)
    if not shot.exists():
        raise RuntimeError("chromium wrote no screenshot")
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(shot, output)


def arguments(argv: list[str] | None, doc: str, default_output: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output)
    parser.add_argument("--dom", type=Path, help="also write the rendered page's DOM here")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} not found; install it with `apt-get install -y chromium` (Debian)")
    return args


@contextlib.contextmanager
def scratch_server(prefix: str) -> Iterator[tuple[Path, dict]]:
    """A scratch MLTRAIN_HOME and PREFECT_HOME with an embedded server in them, all removed
    at the end; yields the scratch folder and the server's addresses."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["MLTRAIN_HOME"] = str(scratch / "home")  # before prefect_mltrain is imported
    os.environ["PREFECT_HOME"] = str(scratch / "prefect-home")
    from prefect_mltrain import runner, server

    try:
        info = server.ensure_server()
        os.environ["PREFECT_API_URL"] = info["api_url"]
        os.environ["PREFECT_UI_URL"] = info["ui_url"]
        yield scratch, info
    finally:
        runner.stop_all()
        server.stop_server()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, __doc__, DEFAULT_OUTPUT)
    started = time.monotonic()
    with scratch_server("mltrain-ui-shot-") as (scratch, info):
        run_id, flow_run_id = run_demo(scratch)
        count = wait_for_flow_run(flow_run_id)
        url = f"{info['ui_url']}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"
        screenshot(url, args.output.resolve(), scratch)
        if args.dom:
            args.dom.write_text(chromium(url, scratch, "--dump-dom").stdout)
    print(f"wrote {args.output} ({count} artifacts, {time.monotonic() - started:.0f} s) "
          f"of run {run_id} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
