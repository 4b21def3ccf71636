"""Compute targets: where a run's script executes (local processes, Docker, Dask)."""

from importlib import import_module

_EXPORTS = {
    "ComputeTarget": "base",
    "LaunchSpec": "base",
    "Job": "base",
    "LocalCompute": "local",
    "resolve_compute_target": "base",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_mltrain.compute' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
