"""Runs inside the container of a Docker target: numpy comes from the run's pip
environment, built into the image once and reused by later runs."""

import os
import platform

import numpy as np

from prefect_mltrain import Run

run = Run.get_context()
data = np.random.default_rng(0).normal(5.0, 2.0, 100_000)
run.log("mean", float(data.mean()))
run.log("std", float(data.std()))
run.log("numpy", np.__version__)
run.log("in_container", os.path.exists("/.dockerenv"))
os.makedirs("outputs", exist_ok=True)
with open("outputs/summary.txt", "w") as f:
    f.write(f"{platform.python_version()} numpy {np.__version__}: mean {data.mean():.3f}\n")
