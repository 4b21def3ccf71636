"""Compute targets: where a run's script executes (local processes, Docker, Dask, Spark).

``base.py`` is the seam (``prepare`` then ``launch``), ``registry.py`` names and finds
targets, one module per target implements it, and ``jobs.py``/``process.py``/``gang.py``
are the job plumbing they share.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "ComputeTarget": "base",
    "LaunchSpec": "base",
    "Prepared": "base",
    "Job": "jobs",
    "LocalCompute": "local",
    "DockerCompute": "docker",
    "DaskCompute": "dask",
    "SparkCompute": "spark",
    "resolve_compute_target": "registry",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)
