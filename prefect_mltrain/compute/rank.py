"""Starts one MPI rank: ``mpiexec ... python -m prefect_mltrain.compute.rank -- ARGV...``.

MPI numbers the ranks; this gives each the same contract as the ranks other launchers start
(``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE`` … from MPICH's or Open MPI's own
variables), runs the script in the run's folder, prefixes its output with ``[rank N]`` and
says so when the rank fails, so the runner can stop the others. On a node that mpiexec
reaches through a proxy, ``MLTRAIN_RANK_CWD`` and ``MLTRAIN_RANK_ARGV`` (JSON) come from the
node's environment. Standard library only and no import from the package: on this machine
it runs as a file with ``python -S -E``, skipping ``site`` (~50 ms less per rank).
"""

import json
import os
import signal
import subprocess
import sys


def exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _int(*names: str, default: int = 0) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def contract() -> dict[str, str]:
    rank = _int("PMI_RANK", "OMPI_COMM_WORLD_RANK")
    size = _int("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", default=1)
    # The launcher's plan (LOCAL_WORLD_SIZE) wins over MPI's count: mpiexec places ranks
    # block-wise, and on one machine standing in for several nodes MPI sees a single node.
    per_node = _int("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                    default=1)
    local, node = rank % per_node, rank // per_node
    return {"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(per_node), "NODE_RANK": str(node), "GROUP_RANK": str(node),
            "ROLE_RANK": str(rank), "ROLE_NAME": "worker"}


def main() -> None:
    env = contract()
    os.environ.update(env)
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if os.environ.get("MLTRAIN_RANK_ARGV"):
        argv = json.loads(os.environ["MLTRAIN_RANK_ARGV"])
    if os.environ.get("MLTRAIN_RANK_CWD"):
        os.chdir(os.environ["MLTRAIN_RANK_CWD"])
    prefix = f"[rank {env['RANK']}] ".encode()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, close_fds=False)  # keep PMI_FD
    except OSError as exc:
        print(f"[rank {env['RANK']}] cannot start {argv[:1]}: {exc}", flush=True)
        sys.exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT):  # pass a stop on to the script
        signal.signal(sig, lambda signum, _: proc.send_signal(signum))
    out = sys.stdout.buffer
    for line in iter(proc.stdout.readline, b""):
        out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        out.flush()
    code = exit_code(proc.wait())
    if code:
        mark = f"prefect-mltrain: rank {env['RANK']} exited with code {code}"
        out.write(prefix + mark.encode() + b"\n")
        out.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
