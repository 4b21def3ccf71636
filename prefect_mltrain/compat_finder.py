"""The ``azureml`` names of Azure ML SDK v1, answered by prefect-mltrain when no real
``azureml`` package is importable.

``install()`` appends a finder to ``sys.meta_path``: it is asked only after every normal
finder failed, so a real ``azureml`` (where installed) always wins, and nothing is ever
installed into site-packages. A run's processes get it from ``bootstrap/sitecustomize.py``;
driver code opts in with ``import prefect_mltrain.compat``. Names resolve on first use, so
``from azureml.core import Run`` in a script imports what ``from prefect_mltrain import Run``
does and nothing more (standard library only here: no Prefect, no pydantic).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

_COMPUTE = ("compute targets are prefect-mltrain's own: name a saved one "
            "(compute_target='gpu-box') or pass prefect_mltrain.compute.DockerCompute / "
            "DaskCompute / LocalCompute")
_DISTRIBUTION = ("give the estimator distributed_backend='mpi' | 'gloo' | 'nccl' | 'ps' with "
                 "node_count and process_count_per_node, or a ScriptRunConfig with "
                 "distributed_job_config=MpiConfiguration(...) / PyTorchConfiguration(...)")

# module -> {name: "prefect_mltrain module:attribute" (supported) or why it is not}
_RUN, _WS, _EXP = "run:Run", "workspace:Workspace", "run:Experiment"
_ENV, _SRC, _RC = "environment:Environment", "config:ScriptRunConfig", "config:RunConfiguration"
MODULES: dict[str, dict[str, str]] = {
    "azureml": {},
    "azureml.core": {
        "Run": _RUN, "Workspace": _WS, "Experiment": _EXP, "Environment": _ENV,
        "ScriptRunConfig": _SRC, "RunConfiguration": _RC,
        "Dataset": "data:Dataset", "Datastore": "data:Datastore",
        "Model": "there is no model registry: download a run's model with "
                 "run.download_file('outputs/model.pkl')",
        "ComputeTarget": _COMPUTE,
    },
    "azureml.core.run": {"Run": _RUN},
    "azureml.core.dataset": {"Dataset": "data:Dataset"},
    "azureml.core.datastore": {"Datastore": "data:Datastore"},
    "azureml.data": {"OutputFileDatasetConfig": "data:OutputFileDatasetConfig",
                     "FileDataset": "data:FileDataset", "TabularDataset": "data:TabularDataset"},
    "azureml.data.data_reference": {"DataReference": "data:DataReference"},
    "azureml.data.output_dataset_config": {
        "OutputFileDatasetConfig": "data:OutputFileDatasetConfig"},
    "azureml.data.file_dataset": {"FileDataset": "data:FileDataset"},
    "azureml.data.tabular_dataset": {"TabularDataset": "data:TabularDataset"},
    "azureml.data.dataset_consumption_config": {
        "DatasetConsumptionConfig": "data:DatasetConsumptionConfig"},
    "azureml.core.workspace": {"Workspace": _WS},
    "azureml.core.experiment": {"Experiment": _EXP},
    "azureml.core.script_run_config": {"ScriptRunConfig": _SRC},
    "azureml.core.environment": {
        "Environment": _ENV, "PythonSection": "environment:PythonSection",
        "DockerSection": "environment:DockerSection"},
    "azureml.core.conda_dependencies": {"CondaDependencies": "environment:CondaDependencies"},
    "azureml.core.runconfig": {
        "RunConfiguration": _RC, "MpiConfiguration": "config:MpiConfiguration",
        "PyTorchConfiguration": "config:PyTorchConfiguration",
        "TensorflowConfiguration": "config:TensorflowConfiguration",
        "DockerConfiguration": "run in a container with a DockerCompute target (its "
                               "image is the environment's docker.base_image)"},
    "azureml.core.compute": {"ComputeTarget": _COMPUTE, "AmlCompute": _COMPUTE,
                             "ComputeInstance": _COMPUTE},
    "azureml.train": {},
    "azureml.train.estimator": {"Estimator": "estimator:Estimator"},
    "azureml.train.sklearn": {"SKLearn": "estimator:SKLearn"},
    "azureml.train.dnn": {
        "PyTorch": "estimator:PyTorch", "TensorFlow": "estimator:TensorFlow",
        "Chainer": "Chainer is not supported (its last release was in 2019): use PyTorch",
        "Mpi": _DISTRIBUTION, "Gloo": _DISTRIBUTION, "Nccl": _DISTRIBUTION,
        "ParameterServer": _DISTRIBUTION},
}
_EXPRESSIONS = {name: f"hyperdrive.parameters:{name}" for name in (
    "choice", "randint", "uniform", "quniform", "loguniform", "qloguniform", "normal",
    "qnormal", "lognormal", "qlognormal")}
_SAMPLINGS = {name: f"hyperdrive.sampling:{name}" for name in (
    "RandomParameterSampling", "GridParameterSampling", "BayesianParameterSampling")}
_POLICIES = {name: f"hyperdrive.policies:{name}" for name in (
    "BanditPolicy", "MedianStoppingPolicy", "TruncationSelectionPolicy", "NoTerminationPolicy")}
_HD_RUN = {"HyperDriveRun": "run:HyperDriveRun",
           "PrimaryMetricGoal": "hyperdrive.policies:PrimaryMetricGoal"}
MODULES.update({
    "azureml.train.hyperdrive": {"HyperDriveConfig": "hyperdrive.config:HyperDriveConfig",
                                 **_HD_RUN, **_EXPRESSIONS, **_SAMPLINGS, **_POLICIES},
    "azureml.train.hyperdrive.runconfig": {
        "HyperDriveConfig": "hyperdrive.config:HyperDriveConfig"},
    "azureml.train.hyperdrive.run": _HD_RUN,
    "azureml.train.hyperdrive.parameter_expressions": _EXPRESSIONS,
    "azureml.train.hyperdrive.sampling": _SAMPLINGS,
    "azureml.train.hyperdrive.policy": _POLICIES,
    "azureml.tensorboard": {"Tensorboard": "tensorboard:Tensorboard"},
    "azureml.tensorboard.export": {
        "export_to_tensorboard": "tensorboard:export_to_tensorboard"},
})
MISSING_MODULES = {
    "azureml.pipeline": "pipelines are Prefect flows here: call submit_run (from "
                        "prefect_mltrain) inside your own @flow",
}


def supported(module: str) -> list[str]:
    return sorted(n for n, target in MODULES[module].items() if _is_target(target))


def _is_target(target: str) -> bool:
    return " " not in target and ":" in target


def _submodules(module: str) -> list[str]:
    return sorted(m.rsplit(".", 1)[1] for m in MODULES if m.rpartition(".")[0] == module)


class ShimModule(types.ModuleType):
    """An ``azureml`` module of the shim: its names are looked up on first use."""

    def __getattr__(self, name: str):
        module = self.__name__
        if name.startswith("_") or name in _submodules(module):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = MODULES[module].get(name)
        has = ", ".join(supported(module) + _submodules(module)) or "nothing"
        if target is None:
            raise ImportError(f"{module}.{name} is not provided by prefect-mltrain; "
                              f"{module} has: {has}", name=module)
        if not _is_target(target):
            raise ImportError(f"{module}.{name} is not available in prefect-mltrain: "
                              f"{target}. {module} has: {has}", name=module)
        where, attribute = target.split(":")
        value = getattr(importlib.import_module(f"prefect_mltrain.{where}"), attribute)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*supported(self.__name__), *_submodules(self.__name__),
                       *super().__dir__()})


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        module = ShimModule(spec.name)
        module.__all__ = supported(spec.name)
        return module

    def exec_module(self, module) -> None:
        pass


class AzureMLFinder(importlib.abc.MetaPathFinder):
    """Finds ``azureml`` and the v1 modules above; asked last, so only when nothing else
    found them, and never for a submodule of a real ``azureml``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "azureml" and not fullname.startswith("azureml."):
            return None
        if fullname != "azureml" and not isinstance(sys.modules.get("azureml"), ShimModule):
            return None  # a real azureml is loaded: its modules are its own
        if fullname not in MODULES:
            parent = fullname.rpartition(".")[0]
            why = MISSING_MODULES.get(fullname, "it is not provided by prefect-mltrain")
            known = ", ".join(f"{parent}.{m}" for m in _submodules(parent)) or "none"
            raise ModuleNotFoundError(f"No module named {fullname!r}: {why}. prefect-mltrain "
                                      f"provides: {known}", name=fullname)
        return importlib.util.spec_from_loader(fullname, _Loader(),
                                               is_package=bool(_submodules(fullname)))


def install() -> None:
    """Let ``import azureml...`` find prefect-mltrain's names (once per interpreter)."""
    if not any(isinstance(finder, AzureMLFinder) for finder in sys.meta_path):
        sys.meta_path.append(AzureMLFinder())
