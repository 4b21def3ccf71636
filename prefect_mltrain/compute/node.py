"""One node of a distributed job inside a container: ``python -m prefect_mltrain.compute.node``.

The runner starts a container per node with ``MLTRAIN_NODE`` (JSON: the distributed
configuration, this node's number, the rendezvous address and the TensorFlow task
addresses); this starts the node's ranks with the same contract and gang rules as local
compute and prints their ``[rank N]`` output. No Prefect here: only the package's
standard-library parts are imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from ..distributed import plan_ranks, rank_env
from .gang import GangJob
from .process import GuardedProcess


def main() -> None:
    spec = json.loads(os.environ.pop("MLTRAIN_NODE"))
    argv = sys.argv[sys.argv.index("--") + 1:]
    plan = plan_ranks(spec["config"])
    slots = [s for s in plan.slots if s.node_rank == spec["node"]]

    def start(port: int) -> dict[str, GuardedProcess]:
        return {f"rank {s.rank}": GuardedProcess(argv, cwd=os.getcwd(), env={
            **os.environ, **rank_env(plan, s, master_addr=spec["master_addr"],
                                     master_port=port, run_id=spec["run_id"],
                                     tf_addresses=spec.get("tf"))}) for s in slots}

    gang = GangJob(start, essential={f"rank {s.rank}" for s in slots
                                     if s.rank in plan.essential},
                   port=spec["master_port"], retry_port=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    code = 143
    try:
        while (code := gang.poll()) is None:
            for line in gang.read_lines(0.25):
                print(line, flush=True)
        for line in gang.finish_output():
            print(line, flush=True)
    finally:
        if gang.poll() is None:
            gang.terminate(5.0)
    sys.exit(code)


if __name__ == "__main__":
    main()
