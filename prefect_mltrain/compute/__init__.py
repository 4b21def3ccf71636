"""Compute targets: where a run's script executes (local processes, Docker, Dask)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "ComputeTarget": "base",
    "LaunchSpec": "base",
    "Job": "base",
    "LocalCompute": "local",
    "DockerCompute": "docker",
    "DaskCompute": "dask",
    "resolve_compute_target": "base",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)
