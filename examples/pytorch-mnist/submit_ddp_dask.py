"""Submit the same CNN as a 2-node DistributedDataParallel (gloo) job on a Dask cluster."""

import argparse
import sys
from pathlib import Path

from prefect_mltrain import (
    Environment,
    Experiment,
    PyTorchConfiguration,
    ScriptRunConfig,
    Workspace,
)
from prefect_mltrain.compute import DaskCompute

HERE = Path(__file__).parent

parser = argparse.ArgumentParser()
parser.add_argument("--scheduler", required=True, help="the Dask scheduler, tcp://HOST:8786")
parser.add_argument("--workspace", default=None, help="workspace URL (default ./.mltrain)")
parser.add_argument("--quick", action="store_true", help="small sizes, as CI runs it")
args = parser.parse_args()

ws = Workspace(args.workspace) if args.workspace else Workspace()
env = Environment.from_pip_requirements("pytorch-mnist", HERE / "requirements.txt")
src = ScriptRunConfig(
    source_directory=HERE, script="train.py", environment=env,
    arguments=["--epochs", 2 if args.quick else 5, "--samples", 2000 if args.quick else 20000],
    compute_target=DaskCompute(address=args.scheduler), max_run_duration_seconds=1200,
    distributed_job_config=PyTorchConfiguration(communication_backend="gloo", process_count=2,
                                                node_count=2))
run = Experiment(ws, "pytorch-ddp").submit(src)
details = run.wait_for_completion(show_output=True, raise_on_error=False)
print(run.id, details["status"], run.get_metrics())
sys.exit(0 if details["status"] == "Completed" else 1)
