"""A/B of the in-process no-op run (README a's ``Experiment.submit() + wait_for_completion()``)
between two checkouts, e.g. main and a worktree at an earlier commit: does a change make a
single run faster or slower?

Usage (from the repository root; OTHER has run ``make setup`` too)::

    git worktree add /tmp/base COMMIT && make -C /tmp/base setup
    .venv/bin/python benchmarks/ab_noop.py /tmp/base --reps 8 --rounds 3

Each checkout runs its own embedded server and warm runner (its own ``benchmarks/.work``).
The two sides take turns, ``--rounds`` times: one process per turn, which warms its runner
with an untimed submit and then times ``--reps`` submits. Sequential runs minutes apart on
this shared machine differ by more than most changes; turns minutes apart do not.
Prints the medians of the wall time and of each phase of the run record, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "AB-RESULT "


def one_turn(reps: int) -> list[dict[str, float]]:
    """In this checkout: ``reps`` timed no-op submits after a warm-up; wall and phases."""
    import harness

    os.environ.update(harness.base_env())
    harness.ensure_server()
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    root = harness.scratch("ab-noop")
    config = ScriptRunConfig(source_directory=str(harness.make_noop_project(root)),
                             script="noop.py")
    exp = Experiment(Workspace(str(root / "ws")), "ab")
    harness.submit_and_wait(exp, config, root / "stamp")  # starts the warm runner
    if not harness.wait_for_warm_runner(60):
        raise SystemExit("no warm runner started within 60 s")
    out = []
    for _ in range(reps):
        rec = harness.submit_and_wait(exp, config, root / "stamp")
        if not rec["ok"]:
            raise SystemExit(f"a no-op run did not complete: {rec.get('error')}")
        out.append({"wall": rec["wall"], **rec["phases"]})
    return out


def turn_in(checkout: Path, reps: int, timeout: float) -> list[dict[str, float]]:
    """One turn as a process of ``checkout``'s own venv, library and ``harness.py`` (this
    file need not exist there: an older commit)."""
    proc = subprocess.run([str(checkout / ".venv" / "bin" / "python"), __file__,
                           "--turn", str(reps)], cwd=checkout, capture_output=True,
                          text=True, timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{checkout}: the turn failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-2000:]}")
    return json.loads(line[len(MARK):])


def commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", nargs="?", type=Path, help="the other checkout")
    parser.add_argument("--reps", type=int, default=8, help="timed submits per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each side")
    parser.add_argument("--turn", type=int, help=argparse.SUPPRESS)  # one turn, here
    args = parser.parse_args()
    if args.turn:  # run in the checkout: its harness, not this file's neighbour
        sys.path.insert(0, str(Path.cwd() / "benchmarks"))
        print(MARK + json.dumps(one_turn(args.turn)), flush=True)
        return
    if args.other is None:
        parser.error("name the other checkout")
    sides = [HERE.parent, args.other.resolve()]
    recs: dict[Path, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            recs[side] += turn_in(side, args.reps, timeout=120 + 30 * args.reps)
    labels = [f"{side} ({commit(side)})" for side in sides]
    print(f"| median of {args.reps * args.rounds} runs, seconds | " + " | ".join(labels)
          + " |\n|---|" + "---:|" * len(sides))
    for key in recs[sides[0]][0]:
        cells = [statistics.median(r[key] for r in recs[side] if key in r) for side in sides]
        print(f"| {key} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
