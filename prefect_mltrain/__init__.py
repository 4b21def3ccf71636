"""prefect-mltrain: configure and submit ML training runs on Prefect 3.

Names are imported lazily so that ``from prefect_mltrain import Run`` inside a training
script stays fast and never imports Prefect.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "workspace",
    "WorkspaceSettings": "workspace",
    "Experiment": "experiment",
    "Run": "run",
    "RunStatus": "records",
    "ScriptRunConfig": "config",
    "MpiConfiguration": "config",
    "PyTorchConfiguration": "config",
    "TensorflowConfiguration": "config",
    "Environment": "environment",
    "submit_run": "flows",
}
_EXPORTS.update({name: "errors" for name in (
    "MLTrainError", "WorkspaceError", "ConfigurationError", "SnapshotError",
    "SnapshotTooLargeError", "EnvironmentBuildError", "ComputeTargetUnavailableError",
    "RunNotFoundError", "UnsafePathError", "RunFailedError",
)})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_mltrain' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
