"""Submit to a Docker target: the script runs in a container of an image built from the
base image plus the pip environment (needs a Docker engine)."""

import argparse
import sys
from pathlib import Path

from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
from prefect_mltrain.compute import DockerCompute

HERE = Path(__file__).parent

parser = argparse.ArgumentParser()
parser.add_argument("--workspace", default=None, help="workspace URL (default ./.mltrain)")
parser.add_argument("--quick", action="store_true", help="the sizes CI uses (the same here)")
parser.add_argument("--image", default="python:3.11-slim",
                    help="base image with python3 (and pip), e.g. python:3.11-slim")
parser.add_argument("--network-mode", default=None, help="e.g. host, where there is no bridge")
args = parser.parse_args()

ws = Workspace(args.workspace) if args.workspace else Workspace()
env = Environment.from_pip_requirements("docker-numpy", HERE / "requirements.txt")
target = DockerCompute(image=args.image, network_mode=args.network_mode)
src = ScriptRunConfig(source_directory=HERE, script="train.py", environment=env,
                      compute_target=target, max_run_duration_seconds=900)
run = Experiment(ws, "docker-pip").submit(src)
details = run.wait_for_completion(show_output=True, raise_on_error=False)
print(run.id, details["status"], run.get_metrics())
sys.exit(0 if details["status"] == "Completed" else 1)
