"""Submit the ridge regression to local compute, in an environment from requirements.txt."""

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
env = Environment.from_pip_requirements("sklearn-ridge", HERE / "requirements.txt")
src = ScriptRunConfig(source_directory=HERE, script="train.py", environment=env,
                      arguments=["--alpha", 0.5, "--samples", 500 if args.quick else 5000],
                      compute_target="local", max_run_duration_seconds=600)
run = Experiment(ws, "sklearn-ridge").submit(src, tags={"example": "sklearn-ridge"})
details = run.wait_for_completion(show_output=True, raise_on_error=False)
print(run.id, details["status"], run.get_metrics())
sys.exit(0 if details["status"] == "Completed" else 1)
