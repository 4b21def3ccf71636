"""``mltrain``: submit runs and look after them from a terminal."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .errors import MLTrainError, WorkspaceError
from .workspace import Workspace


def _workspace(args: argparse.Namespace) -> Workspace:
    if args.workspace:
        return Workspace(args.workspace)
    try:
        return Workspace.from_config()
    except WorkspaceError:
        return Workspace()


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=1, default=str) if args.json else text)


def cmd_submit(args: argparse.Namespace) -> int:
    from .config import ScriptRunConfig
    from .experiment import Experiment

    tags = dict(t.split("=", 1) for t in args.tag)
    config = ScriptRunConfig(source_directory=args.source_directory, script=args.script,
                             arguments=args.arguments,
                             max_run_duration_seconds=args.max_run_duration_seconds)
    run = Experiment(_workspace(args), args.experiment).submit(config, tags=tags)
    if not args.wait:
        _print(args, {"run_id": run.id}, run.id)
        return 0
    details = run.wait_for_completion(show_output=not args.json, raise_on_error=False)
    if args.json:
        _print(args, details, "")
    return 0 if details["status"] == "Completed" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Copy the demo project to ./mltrain-demo and run it on the embedded default."""
    project = Path("mltrain-demo")
    project.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parent / "demo" / "train.py", project / "train.py")
    args.source_directory, args.script, args.arguments = str(project), "train.py", ["--alpha", "0.1"]
    args.experiment, args.tag, args.wait = "demo", ["kind=ridge"], True
    args.max_run_duration_seconds = 600
    code = cmd_submit(args)
    if code == 0 and not args.json:
        print("\nNext: `mltrain runs list`, `mltrain runs show <id>`, "
              "`mltrain download <id> --prefix outputs/`")
    return code


def cmd_runs_list(args: argparse.Namespace) -> int:
    from .experiment import Experiment

    ws = _workspace(args)
    names = [args.experiment] if args.experiment else ws.list_experiments()
    rows = []
    for name in names:
        for run in Experiment(ws, name).get_runs()[: args.limit]:
            record = run._record
            rows.append({"run_id": run.id, "experiment": name, "status": record["status"],
                         "created_at": record.get("created_at")})
    rows.sort(key=lambda r: r["created_at"] or 0, reverse=True)
    text = "\n".join(f"{r['run_id']:<48} {r['status']:<11} {r['experiment']}" for r in rows)
    _print(args, rows, text or "no runs yet")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from .run import Run

    run = Run.get(_workspace(args), args.run_id)
    details = run.get_details()
    details["metrics"] = run.get_metrics()
    details["files"] = run.get_file_names()
    keys = ("run_id", "status", "exit_code", "error", "snapshot_id", "flow_run_url", "tags",
            "metrics", "files")
    _print(args, details, "\n".join(f"{k}: {details.get(k)}" for k in keys))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .run import Run
    from .watch import LogFollower, follow_run

    run = Run.get(_workspace(args), args.run_id)
    if args.follow:
        follow_run(run, show_output=True)
    else:
        for line in LogFollower(run).new_lines():
            print(line)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .run import Run

    run = Run.get(_workspace(args), args.run_id)
    paths = run.download_files(prefix=args.prefix, output_directory=args.output_directory)
    _print(args, [str(p) for p in paths], "\n".join(str(p) for p in paths))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .run import Run

    Run.get(_workspace(args), args.run_id).cancel()
    _print(args, {"run_id": args.run_id, "cancel_requested": True}, "cancel requested")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from . import server

    if args.action == "start":
        info = server.ensure_server()
    elif args.action == "stop":
        info = {"stopped": server.stop_server()}
    else:
        info = server.running_server() or {"running": False}
    _print(args, info, json.dumps(info))
    return 0


def cmd_snapshot_preview(args: argparse.Namespace) -> int:
    from .snapshot import preview_snapshot

    files = preview_snapshot(args.source_directory)
    total = sum(size for _, size in files)
    _print(args, files, "\n".join(f"{size:>12}  {name}" for name, size in files)
           + f"\n{len(files)} files, {total} bytes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mltrain", description=__doc__)
    parser.add_argument("--workspace", help="workspace URL (default: mltrain.json or ./.mltrain)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit a training script")
    p.add_argument("source_directory")
    p.add_argument("script")
    p.add_argument("arguments", nargs=argparse.REMAINDER, help="arguments for the script")
    p.add_argument("-e", "--experiment", default="default")
    p.add_argument("-t", "--tag", action="append", default=[], help="key=value")
    p.add_argument("--max-run-duration-seconds", type=int)
    p.add_argument("--no-wait", dest="wait", action="store_false")
    p.set_defaults(func=cmd_submit)

    sub.add_parser("demo", help="run the demo project on local compute").set_defaults(
        func=cmd_demo)

    runs = sub.add_parser("runs", help="list or show runs").add_subparsers(dest="action",
                                                                          required=True)
    p = runs.add_parser("list")
    p.add_argument("-e", "--experiment")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("logs", help="print a run's output")
    p.add_argument("run_id")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("download", help="download a run's files")
    p.add_argument("run_id")
    p.add_argument("--prefix", default="outputs/")
    p.add_argument("-o", "--output-directory", default=".")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("cancel", help="cancel a run")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("server", help="the embedded local Prefect server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("snapshot", help="preview what a submit would capture")
    p.add_argument("source_directory")
    p.set_defaults(func=cmd_snapshot_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MLTrainError, ValueError, FileNotFoundError) as exc:
        print(f"mltrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
