"""prefect-mltrain: configure and submit ML training runs on Prefect 3.

The package is a stack of layers, each importing only from those below it (see
``docs/architecture.md``): files, events and the store layout; the fsspec workspace and
snapshots; environments and their builds; run configurations; compute targets (``prepare``
then ``launch``); run records (``store.RunStore``, the only writer of ``run.json``);
the script's context; the control plane (Prefect API, job loop, watcher); the
``submit_run`` flow, runners and submission; and on top ``Experiment``, ``Run`` and the
``mltrain`` command.

Names are imported lazily so that ``from prefect_mltrain import Run`` inside a training
script stays fast and never imports Prefect.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "workspace",
    "WorkspaceSettings": "workspace",
    "Experiment": "run",
    "Run": "run",
    "RunStatus": "records",
    "ScriptRunConfig": "config",
    "RunConfiguration": "config",
    "MpiConfiguration": "config",
    "PyTorchConfiguration": "config",
    "TensorflowConfiguration": "config",
    "Environment": "environment",
    "CondaDependencies": "environment",
    "Estimator": "estimator",
    "SKLearn": "estimator",
    "PyTorch": "estimator",
    "TensorFlow": "estimator",
    "submit_run": "flows",
    "Datastore": "data",
    "Dataset": "data",
    "FileDataset": "data",
    "TabularDataset": "data",
    "DataReference": "data",
    "DatasetConsumptionConfig": "data",
    "OutputFileDatasetConfig": "data",
}
_EXPORTS.update({name: "errors" for name in (
    "MLTrainError", "WorkspaceError", "ConfigurationError", "SnapshotError",
    "SnapshotTooLargeError", "EnvironmentBuildError", "ComputeTargetUnavailableError",
    "RunNotFoundError", "UnsafePathError", "RunFailedError", "RunContextError",
    "ImmutablePropertyError", "DataError",
)})

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


def __dir__():
    return __all__
