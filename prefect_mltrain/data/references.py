"""Data in a run's arguments: ``ds.as_mount()``, ``dataset.as_named_input("train").as_download()``,
``OutputFileDatasetConfig(...)``.

Each is a pydantic model because it is part of ``ScriptRunConfig.arguments`` (a flow
parameter, and the run record). It names data (a datastore and a path, or a dataset's
pinned files) and how the script gets it; the runner resolves it to a local path on the
compute where the script runs (``staging.py``) and puts that path in the script's argv.
"""

from __future__ import annotations

import re
import secrets
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import DataError

DEFAULT_DATASTORE = "workspaceblobstore"  # Azure's name for a workspace's own blob store
DEFAULT_OUTPUT_PATH = "dataset/{run-id}/{output-name}"  # v1's default output destination
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_data_name(value: str, what: str) -> str:
    """Datastore, dataset, input and output names: they become environment variable names
    (``AZUREML_DATAREFERENCE_<name>``), so letters, digits and ``_``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise DataError(f"invalid {what} {value!r}: use letters, digits and '_', starting "
                        "with a letter or '_' (it names an environment variable of the run)")
    return value


def store_path(path: Any, what: str = "path") -> str:
    """A path inside a datastore, as ``a/b/c`` (no leading ``/``); ``DataError`` for one
    that leaves the datastore (``..``) or is not a path."""
    if path is None:
        return ""
    if not isinstance(path, str) or "\x00" in path or "\\" in path:
        raise DataError(f"invalid {what} {path!r}: give a path inside the datastore, like "
                        "'mnist/train'")
    parts = PurePosixPath(path.strip("/")).parts if path.strip("/") else ()
    if ".." in parts:
        raise DataError(f"{what} {path!r} leaves the datastore ('..'): give a path inside "
                        "it, like 'mnist/train'")
    return "/".join(p for p in parts if p != ".")


def _datastore_name(datastore: Any) -> str:
    name = getattr(datastore, "name", datastore)
    if not isinstance(name, str):
        raise DataError(f"expected a Datastore or a datastore name, got {datastore!r}")
    return name


class DataReference(_Model):
    """A path in a datastore, and how a run gets it (v1's ``DataReference``).

    ``mode="mount"`` (the default) is a read-only filesystem mount where FUSE works, else a
    download; ``"download"`` copies the files before the script starts, to
    ``path_on_compute`` when given (relative to the script's folder, or absolute). The
    script gets the local path as the argument, and in ``$AZUREML_DATAREFERENCE_<name>``.

    Example:
        ```python
        ds = ws.get_default_datastore()
        src = ScriptRunConfig("proj", "train.py",
                              arguments=["--data", ds.path("mnist").as_download()])
        ```
    """

    kind: Literal["datastore"] = "datastore"
    datastore_name: str
    data_reference_name: str
    path_on_datastore: str = ""
    mode: Literal["mount", "download"] = "mount"
    path_on_compute: str | None = None
    overwrite: bool = False

    def __init__(self, datastore: Any = None, data_reference_name: str | None = None,
                 path_on_datastore: str | None = None, mode: str = "mount",
                 path_on_compute: str | None = None, overwrite: bool = False, **data: Any):
        if datastore is not None:
            data["datastore_name"] = _datastore_name(datastore)
        data.setdefault("data_reference_name", data_reference_name or data.get("datastore_name"))
        data.setdefault("path_on_datastore", store_path(path_on_datastore, "path_on_datastore"))
        super().__init__(mode=mode, path_on_compute=path_on_compute, overwrite=overwrite, **data)

    @field_validator("datastore_name", "data_reference_name")
    @classmethod
    def _names(cls, value: str) -> str:
        return check_data_name(value, "data reference name")

    @property
    def key(self) -> str:
        return self.data_reference_name

    def as_mount(self) -> DataReference:
        return self.model_copy(update={"mode": "mount", "path_on_compute": None})

    def as_download(self, path_on_compute: str | None = None,
                    overwrite: bool = False) -> DataReference:
        return self.model_copy(update={"mode": "download", "path_on_compute": path_on_compute,
                                       "overwrite": overwrite})

    def path(self, path: str | None = None,
             data_reference_name: str | None = None) -> DataReference:
        """A path below this one."""
        below = "/".join(p for p in (self.path_on_datastore, store_path(path)) if p)
        return self.model_copy(update={"path_on_datastore": below, "data_reference_name":
                                       check_data_name(data_reference_name or self.key,
                                                       "data reference name")})

    def __str__(self) -> str:  # as v1 prints a reference inside a command line
        return f"$AZUREML_DATAREFERENCE_{self.key}"


class DataPath(_Model):
    """One path or glob of a dataset, in one datastore."""

    datastore: str
    path: str


class DatasetSpec(_Model):
    """What a dataset is: its files (paths and globs in datastores), how to read them as a
    table, and — once registered — its name and version, which pin the files' content."""

    type: Literal["file", "tabular"] = "file"
    paths: list[DataPath]
    name: str | None = None
    version: int | None = None
    reader: dict[str, Any] = Field(default_factory=dict)  # tabular: format, separator, ...

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}" if self.name else "an unregistered dataset"


class DatasetConsumptionConfig(_Model):
    """A dataset as a named input of a run (v1's ``as_named_input(...)``): the script finds
    its local path in ``Run.get_context().input_datasets[name]``.

    Example:
        ```python
        files = Dataset.get_by_name(ws, "mnist")
        src = ScriptRunConfig("proj", "train.py",
                              arguments=["--input", files.as_named_input("train").as_mount()])
        ```
    """

    kind: Literal["dataset"] = "dataset"
    name: str
    dataset: DatasetSpec
    mode: Literal["direct", "mount", "download"] = "direct"
    path_on_compute: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_data_name(value, "input name")

    @property
    def key(self) -> str:
        return self.name

    def as_mount(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return self.model_copy(update={"mode": "mount", "path_on_compute": path_on_compute})

    def as_download(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return self.model_copy(update={"mode": "download", "path_on_compute": path_on_compute})

    def __str__(self) -> str:
        return f"DatasetConsumptionConfig:{self.name}"


class OutputFileDatasetConfig(_Model):
    """A folder the script writes, uploaded to a datastore when the run ends — whatever the
    ending — and registered as a file dataset when asked (v1's ``OutputFileDatasetConfig``).

    The script gets the local folder as the argument and in ``$<name>``. ``{run-id}`` and
    ``{output-name}`` in the destination path are replaced. The default destination is
    ``dataset/{run-id}/{output-name}`` on the workspace's default datastore.

    Example:
        ```python
        out = OutputFileDatasetConfig(destination=(ds, "models/{run-id}")
                                      ).register_on_complete("model")
        src = ScriptRunConfig("proj", "train.py", arguments=["--out", out])
        ```
    """

    kind: Literal["output"] = "output"
    name: str
    destination_datastore: str | None = None  # None: the workspace's default datastore
    destination_path: str = DEFAULT_OUTPUT_PATH
    source: str | None = None  # the local folder the script writes (default: one made for it)
    overwrite: bool = False
    source_globs: list[str] | None = None
    register_name: str | None = None
    register_description: str | None = None
    register_tags: dict[str, str] = Field(default_factory=dict)

    def __init__(self, name: str | None = None, destination: tuple[Any, str] | None = None,
                 source: str | None = None, partition_format: str | None = None, **data: Any):
        if partition_format is not None:
            raise DataError("partition_format is not supported: write the partitions as "
                            "folders under the output and give their glob to Dataset.File")
        data.setdefault("name", name or f"output_{secrets.token_hex(4)}")
        if destination is not None:
            if not (isinstance(destination, tuple | list) and len(destination) == 2):
                raise DataError("destination must be (datastore, 'path/{run-id}'), got "
                                f"{destination!r}")
            data["destination_datastore"] = _datastore_name(destination[0])
            data["destination_path"] = destination[1]
        super().__init__(source=source, **data)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_data_name(value, "output name")

    @field_validator("destination_path")
    @classmethod
    def _path(cls, value: str) -> str:
        return store_path(value, "destination path")

    @property
    def key(self) -> str:
        return self.name

    def as_upload(self, overwrite: bool = False,
                  source_globs: list[str] | None = None) -> OutputFileDatasetConfig:
        return self.model_copy(update={"overwrite": overwrite, "source_globs": source_globs})

    def as_mount(self) -> OutputFileDatasetConfig:
        """v1 writes through a mount; here the folder is local and uploaded at the end,
        which a script cannot tell apart (its files reach the same destination)."""
        return self.model_copy()

    def register_on_complete(self, name: str, description: str | None = None,
                             tags: dict[str, str] | None = None) -> OutputFileDatasetConfig:
        return self.model_copy(update={"register_name": check_data_name(name, "dataset name"),
                                       "register_description": description,
                                       "register_tags": dict(tags or {})})

    def __str__(self) -> str:
        return f"${self.name}"


DataArgument = Annotated[DataReference | DatasetConsumptionConfig | OutputFileDatasetConfig,
                         Field(discriminator="kind")]


def data_arguments(arguments: list[Any]) -> list[Any]:
    """The data references among a run's arguments."""
    return [a for a in arguments
            if isinstance(a, DataReference | DatasetConsumptionConfig | OutputFileDatasetConfig)]
