"""d. A no-op run on the Docker target (``DockerCompute``, image cached) vs. ``docker run`` of
the same image and script, interleaved. In the full run only when a Docker engine answers and
the image exists; otherwise recorded as skipped, with why."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from typing import Any

from harness import (
    HERE,
    PIP_CONFIG_IMPORT,
    check,
    first_submit,
    fmt,
    fmt_ratio,
    fresh_process_costs,
    fresh_server_if_alone,
    interleaved,
    log,
    make_noop_project,
    ratio,
    ratio_head,
    row,
    run_peer,
    run_phases,
    scratch,
    start_server,
    stats_table,
    submit_and_wait,
    summarize,
    summarize_runs,
    tail,
)

TITLE = "Docker"
GOAL_OVER_LOCAL = 0.3  # seconds over our local no-op, wall medians
DOCKER_IMAGE = "mltrain-base:bookworm"  # made offline by .ci/docker-engine.sh
DOCKER_PHASES = run_phases(  # PHASES, with what each step does on the Docker target
    "record + snapshot + git", "runner process + Prefect flow run",
    "engine check + environment image lookup", "restore snapshot + container create + start",
    "container runs, exits, is removed", "final sync + artifacts")
# Per-run costs of our Docker path in a forked runner, timed in a fresh process: the warm
# runner has imported Prefect but not the Docker SDK, and the image's tag hashes the host's
# index settings, read with `pip config list` before the cache can be looked up.
DOCKER_PATH_PY = f"""\
import json, time
t = time.perf_counter(); import docker; a = time.perf_counter() - t
{PIP_CONFIG_IMPORT}
t = time.perf_counter(); _pip_config(); b = time.perf_counter() - t
print(json.dumps({{"import docker": a, "`pip config list` (image index settings)": b}}))
"""


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def unavailable() -> str | None:
    """Why this benchmark cannot run here (no engine answers, or no base image), else None."""
    for args, what in ((["info"], "no Docker engine answers"),
                       (["image", "inspect", DOCKER_IMAGE], f"no image {DOCKER_IMAGE}")):
        try:
            out = docker(*args)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{what}: {exc}"
        if out.returncode != 0:
            return f"{what}: {tail(out.stderr, 300).strip()} (`bash .ci/docker-engine.sh` " \
                "starts one and builds the image)"
    return None


def run_containers() -> list[str]:
    """Containers of our runs on the engine (any state)."""
    out = docker("ps", "-a", "--filter", "label=mltrain.run_id", "-q")
    return out.stdout.split() if out.returncode == 0 else [f"`docker ps` failed: {out.stderr}"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server_if_alone(args)
    from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.compute import DockerCompute

    reps = 3 if args.quick else 7
    root = scratch("docker")
    proj = make_noop_project(root)
    ws = Workspace(str(root / "ws"))
    # The script's stamp must be reachable from inside both containers: its folder is
    # bind-mounted at the same path in each (one extra mount per side).
    stamps = root / "stamp"
    stamps.mkdir()
    stamp = stamps / "stamp.txt"
    env = Environment("noop")  # no packages: the same image as no environment at all
    env.environment_variables = {"BENCH_STAMP_FILE": str(stamp)}  # a container gets only these
    config = ScriptRunConfig(
        source_directory=str(proj), script="noop.py", environment=env,
        compute_target=DockerCompute(image=DOCKER_IMAGE, network_mode="host",
                                     volumes={str(stamps): str(stamps)}))
    engine = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    server_start = start_server()

    def ours() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "docker"), config, stamp, DOCKER_PHASES)

    def peer() -> dict[str, Any]:
        return run_peer(["docker", "run", "--rm", "--network", "host", "-v", f"{proj}:/src:ro",
                         "-v", f"{stamps}:{stamps}", "-e", f"BENCH_STAMP_FILE={stamp}",
                         "-w", "/src", DOCKER_IMAGE, "python3", "noop.py"], stamp)

    # A cold runner's submit, which starts the warm runner as it exits; once that listens,
    # the warm-up below waits for its Prefect import, so the timed reps find it ready.
    def ours_local() -> dict[str, Any]:  # the same no-op on local compute: the goal's base
        return submit_and_wait(Experiment(ws, "local"), ScriptRunConfig(
            source_directory=str(proj), script="noop.py"), stamp)

    first = first_submit(ours)
    warmup, raw = interleaved({"ours": ours, "docker_run": peer, "ours_local": ours_local},
                              reps)
    image = environment_image(first, raw["ours"])
    log(f"environment image {image['tag']}: built by the first submit "
        f"{image['built_by_first_submit']}, cached in {image['timed_cache_hits']} timed reps")
    left = run_containers()
    costs = fresh_process_costs(min(reps, 5), [[sys.executable, "-c", DOCKER_PATH_PY]],
                                HERE.parent)  # untimed diagnostic, after the reps
    summary: dict[str, Any] = {"ours": summarize_runs(raw["ours"], DOCKER_PHASES),
                               "docker_run": summarize_runs(raw["docker_run"]),
                               "ours_local": summarize_runs(raw["ours_local"])}
    summary["ratios"] = {key: ratio(summary["ours"][key]["median"],
                                    summary["docker_run"][key]["median"])
                         for key in ("wall", "to_script_start")}
    summary["path_costs"] = {label: summarize(v) for label, v in costs.items()}
    summary["over_local"] = (summary["ours"]["wall"]["median"]
                             - summary["ours_local"]["wall"]["median"])
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "image": DOCKER_IMAGE, "engine": engine,
            "server_start_seconds": server_start, "environment_image": image,
            "containers_left": left, "first_submit": first, "warmup": warmup, "raw": raw,
            "path_costs": costs, "summary": summary}


def environment_image(first: dict[str, Any], timed: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's environment image: its tag, whether the first submit built it, and in how
    many good timed reps the same tag was a cache hit."""
    built = first.get("environment_build") or {}
    return {"tag": built.get("image"), "built_by_first_submit": built.get("cached") is False,
            "first_build_seconds": built.get("build_seconds"),
            "timed_cache_hits": sum(bool((r.get("environment_build") or {}).get("cached"))
                                    and r["environment_build"]["image"] == built.get("image")
                                    for r in timed if r["ok"])}


def checks(dock: dict[str, Any]) -> list[dict[str, Any]]:
    s, img = dock["summary"], dock["environment_image"]
    out = [check(f"docker {name}: every rep succeeded", s[name]["failures"] == 0,
                 f"{s[name]['failures']} failed of {dock['reps']}")
           for name in ("ours", "docker_run", "ours_local")]
    out.append(check("docker ours: every timed rep found the first submit's image cached",
                     bool(img["tag"]) and img["timed_cache_hits"] == s["ours"]["wall"]["n"],
                     f"{img['tag']}: {img['timed_cache_hits']} hits of {s['ours']['wall']['n']}"))
    out.append(check("docker: no container labelled mltrain.run_id left",
                     not dock["containers_left"], " ".join(dock["containers_left"]) or "none"))
    return out


def render_skipped(reason: str) -> list[str]:
    return ["### d. Docker target: skipped", "", reason, ""]


def render(dock: dict[str, Any]) -> list[str]:
    s, img = dock["summary"], dock["environment_image"]
    lines = [f"### d. Docker target: no-op run vs `docker run` ({dock['reps']} interleaved "
             "reps each, image cached, seconds)", "",
             *ratio_head("ours / `docker run` (medians)")]
    rows = [("`Experiment.submit()` + `wait_for_completion()`, `DockerCompute`, wall",
             "ours", "wall"),
            ("peer: `docker run --rm` of the same image and script, wall", "docker_run",
             "wall"),
            ("submit → script start: ours", "ours", "to_script_start"),
            ("spawn → script start: `docker run`", "docker_run", "to_script_start")]
    for label, name, key in rows:
        r = 1.0 if name == "docker_run" else s["ratios"][key]
        lines.append(row(label, s[name][key], fmt_ratio(r)))
    if "ours_local" in s:
        over = s["over_local"]
        lines += ["", "| goal | ours, Docker | ours, local compute (same rounds) | Docker − "
                  "local | met? |", "|---|---:|---:|---:|---|",
                  f"| Docker no-op ≤ local no-op + {GOAL_OVER_LOCAL} s (the container start) | "
                  f"{fmt(s['ours']['wall']['median'])} | "
                  f"{fmt(s['ours_local']['wall']['median'])} | +{fmt(over)} | "
                  f"{'met' if over <= GOAL_OVER_LOCAL else 'not met'} |"]
    lines += ["", "Where our time goes (seconds, from the run record's status_history):", "",
              *stats_table("phase", s["ours"]["phases"]),
              row("client notices the end (ended_at → return)",
                  s["ours"]["ended_to_client_exit"]), "",
              "Of Preparing→Starting, two per-run costs of a forked runner (diagnostic, "
              "timed in a fresh process; seconds):", "",
              *stats_table("cost", s["path_costs"])]
    lines += ["",
              f"Environment image `{img['tag']}`: "
              + (f"built by the first, untimed submit ({fmt(img['first_build_seconds'])} s)"
                 if img["built_by_first_submit"] else "already on the engine")
              + f"; cached in {img['timed_cache_hits']} of {s['ours']['wall']['n']} timed "
              f"reps. Containers labelled `mltrain.run_id` left afterwards: "
              f"{len(dock['containers_left'])}. Docker engine {dock['engine']}.", ""]
    return lines
