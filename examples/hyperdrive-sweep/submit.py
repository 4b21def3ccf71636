"""A HyperDrive sweep of the ridge example's --alpha: Bayesian sampling (Optuna's TPE)
maximizing r2, four trials at a time; prints the best trial at the end."""

import argparse
import sys
from pathlib import Path

from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
from prefect_mltrain.hyperdrive import (
    BayesianParameterSampling,
    HyperDriveConfig,
    PrimaryMetricGoal,
    uniform,
)

RIDGE = Path(__file__).parent.parent / "sklearn-ridge"

parser = argparse.ArgumentParser()
parser.add_argument("--workspace", default=None, help="workspace URL (default ./.mltrain)")
parser.add_argument("--quick", action="store_true", help="small sizes, as CI runs it")
args = parser.parse_args()

ws = Workspace(args.workspace) if args.workspace else Workspace()
env = Environment.from_pip_requirements("sklearn-ridge", RIDGE / "requirements.txt")
src = ScriptRunConfig(source_directory=RIDGE, script="train.py", environment=env,
                      arguments=["--samples", 300 if args.quick else 5000],
                      max_run_duration_seconds=600)
sampling = BayesianParameterSampling({"--alpha": uniform(0.01, 50.0)}, properties={"seed": 3})
hd = HyperDriveConfig(run_config=src, hyperparameter_sampling=sampling,
                      primary_metric_name="r2", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                      max_total_runs=4 if args.quick else 20, max_concurrent_runs=2)
hd_run = Experiment(ws, "ridge-sweep").submit(hd)
details = hd_run.wait_for_completion(show_output=True, raise_on_error=False)
best = hd_run.get_best_run_by_primary_metric()
print(hd_run.id, details["status"], "best:", best.id if best else None,
      hd_run.get_hyperparameters().get(best.id) if best else None,
      best.get_metrics().get("r2") if best else None)
sys.exit(0 if details["status"] == "Completed" and best else 1)
