"""Exceptions users can catch; every message names the cause and the fix."""


class MLTrainError(Exception):
    """Base class of every error this package raises on purpose."""


class WorkspaceError(MLTrainError):
    """The workspace cannot be found, reached or read."""


class ConfigurationError(MLTrainError, ValueError):
    """A run configuration is invalid."""


class SnapshotError(MLTrainError):
    """The source directory cannot be captured or restored."""


class SnapshotTooLargeError(SnapshotError):
    """The source directory exceeds the snapshot budget."""


class EnvironmentBuildError(MLTrainError):
    """The run's environment could not be resolved or built."""


class ComputeTargetUnavailableError(MLTrainError):
    """The compute target cannot be reached or used."""


class RunCanceledError(MLTrainError):
    """A step of a run stopped because the run was canceled."""


class RunNotFoundError(MLTrainError, KeyError):
    """No run with that id exists in the workspace."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsafePathError(MLTrainError, ValueError):
    """A file name would leave the run's folder."""


class RunFailedError(MLTrainError):
    """Raised by ``wait_for_completion(raise_on_error=True)`` when the run did not complete."""


class RunContextError(MLTrainError):
    """``Run.get_context(allow_offline=False)`` outside a submitted run."""


class ImmutablePropertyError(MLTrainError, ValueError):
    """A run property was given a different value; properties never change once set."""


class DataError(MLTrainError):
    """A datastore or dataset cannot be found, reached or used as asked."""
