"""Submit the CNN to local compute; then look at it with TensorBoard."""

import argparse
import sys
from pathlib import Path

from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace

HERE = Path(__file__).parent

parser = argparse.ArgumentParser()
parser.add_argument("--workspace", default=None, help="workspace URL (default ./.mltrain)")
parser.add_argument("--quick", action="store_true", help="small sizes, as CI runs it")
args = parser.parse_args()

ws = Workspace(args.workspace) if args.workspace else Workspace()
env = Environment.from_pip_requirements("pytorch-mnist", HERE / "requirements.txt")
src = ScriptRunConfig(source_directory=HERE, script="train.py", environment=env,
                      arguments=["--epochs", 2 if args.quick else 5,
                                 "--samples", 2000 if args.quick else 20000],
                      max_run_duration_seconds=1200)
run = Experiment(ws, "pytorch-mnist").submit(src)
details = run.wait_for_completion(show_output=True, raise_on_error=False)
print(run.id, details["status"], run.get_metrics())
print(f"TensorBoard: mltrain tensorboard {run.id}")
sys.exit(0 if details["status"] == "Completed" else 1)
