"""An MPI job: each rank fits a least-squares line to its shard of the data; allreduce
combines the ranks' sufficient statistics into the fit on all of it."""

import numpy as np
from mpi4py import MPI

from prefect_mltrain import Run

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
rng = np.random.default_rng(seed=rank)  # every rank makes its own shard
x = rng.uniform(0, 10, 10_000)
y = 3.0 * x + 2.0 + rng.normal(0, 1, x.size)
local = np.array([x.size, x.sum(), y.sum(), (x * x).sum(), (x * y).sum()])
total = np.zeros_like(local)
comm.Allreduce(local, total, op=MPI.SUM)
n, sx, sy, sxx, sxy = total
slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
intercept = (sy - slope * sx) / n
print(f"rank {rank}/{size}: fit on {int(n)} points", flush=True)
if rank == 0:
    run = Run.get_context()
    run.log("ranks", size)
    run.log("points", int(n))
    run.log("slope", float(slope))
    run.log("intercept", float(intercept))
