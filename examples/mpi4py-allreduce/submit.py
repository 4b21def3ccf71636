"""Submit the allreduce fit as an MPI job: 3 ranks on this machine (mpiexec from PyPI)."""

import argparse
import sys
from pathlib import Path

from prefect_mltrain import (
    Environment,
    Experiment,
    MpiConfiguration,
    ScriptRunConfig,
    Workspace,
)

HERE = Path(__file__).parent

parser = argparse.ArgumentParser()
parser.add_argument("--workspace", default=None, help="workspace URL (default ./.mltrain)")
parser.add_argument("--quick", action="store_true", help="the sizes CI uses (the same here)")
parser.add_argument("--ranks", type=int, default=3)
args = parser.parse_args()

ws = Workspace(args.workspace) if args.workspace else Workspace()
env = Environment.from_pip_requirements("mpi4py-allreduce", HERE / "requirements.txt")
src = ScriptRunConfig(source_directory=HERE, script="train.py", environment=env,
                      distributed_job_config=MpiConfiguration(process_count_per_node=args.ranks),
                      max_run_duration_seconds=600)
run = Experiment(ws, "mpi4py-allreduce").submit(src)
details = run.wait_for_completion(show_output=True, raise_on_error=False)
print(run.id, details["status"], run.get_metrics())
sys.exit(0 if details["status"] == "Completed" else 1)
