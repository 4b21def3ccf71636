"""docs/ui_screenshot.py runs the demo on a scratch server and photographs it in the Prefect UI."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "ui_screenshot.py"


@pytest.mark.timeout(660)
def test_ui_screenshot(tmp_path):
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("no /usr/bin/chromium; install it with `apt-get install -y chromium`")
    output, dom = tmp_path / "shot.png", tmp_path / "page.html"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output", str(output),
                           "--dom", str(dom)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(3 artifacts," in proc.stdout  # run summary, metrics and outputs
    run_id = re.search(r"of run (\S+) from", proc.stdout).group(1)
    page = dom.read_text()
    assert run_id in page  # the flow run's name is the run's id
    assert "Completed" in page  # its state, as the UI shows it

    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1400, 1000)
    # A blank 1400x1000 page compresses to ~6 kB; the rendered run page is ~120 kB.
    assert len(data) > 60_000, f"screenshot looks blank ({len(data)} bytes)"


@pytest.mark.timeout(660)
def test_tensorboard_screenshot_shows_two_runs(tmp_path):
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("no /usr/bin/chromium; install it with `apt-get install -y chromium`")
    output, dom = tmp_path / "tb.png", tmp_path / "tb.html"
    script = SCRIPT.parent / "tensorboard_screenshot.py"
    proc = subprocess.run([sys.executable, str(script), "--output", str(output), "--dom",
                           str(dom)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert dom.read_text().startswith("<!DOCTYPE html>")
    shown = json.loads(proc.stdout.split("TensorBoard's runs: ", 1)[1])
    assert sorted(shown) == ["tensorboard-demo/lr=0.05", "tensorboard-demo/lr=0.15"]
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 40_000, f"screenshot looks blank ({len(data)} bytes)"
