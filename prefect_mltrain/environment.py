"""The Python environment a run's script executes in: declared, hashed, registered.

An ``Environment`` declares an interpreter (user-managed) or the packages to install, the
Docker image to start from, and environment variables. ``build_spec()`` is what builders
take: its hash ignores the name, the version and the order of packages, so equal specs
share one build. Secret variables reach the script's process only: never the run record,
Prefect or the logs (every dump of an environment names them, without their values).
Building lives in ``environment_build.py`` and ``image_build.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator

from .environment_build import BuildSpec, BuiltEnvironment, build_environment
from .errors import MLTrainError
from .image_build import BuiltImage, build_image
from .workspace import Workspace

CURATED_DIR = Path(__file__).parent / "curated"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CondaDependencies(_Model):
    """Packages to install: pip requirements, and conda packages with their channels.

    Example (as Azure ML v1 writes it):
        ```python
        cd = CondaDependencies.create(python_version="3.11", pip_packages=["pandas"])
        env.python.conda_dependencies = cd
        ```
    """

    python_version: str | None = Field(
        None, description="Python version of the built environment (v1's python=3.X "
        "conda entry), e.g. '3.11'; python.python_version says the same."
    )
    channels: list[str] = Field(default_factory=list, description="Conda channels, in order.")
    conda_packages: list[str] = Field(default_factory=list, description="Conda packages.")
    pip_packages: list[str] = Field(default_factory=list, description="pip requirements.")
    pip_options: list[str] = Field(
        default_factory=list, description="pip options, e.g. '--extra-index-url URL'."
    )

    @classmethod
    def create(cls, pip_packages: list[str] | None = None,
               conda_packages: list[str] | None = None,
               channels: list[str] | None = None, python_version: str | None = None,
               pip_indexurl: str | None = None, pin_sdk_version: bool = True
               ) -> CondaDependencies:
        """v1's constructor. ``pin_sdk_version`` is accepted and has nothing to pin: no
        Azure SDK package is added (scripts import ``azureml`` from prefect-mltrain)."""
        return cls(pip_packages=list(pip_packages or []),
                   conda_packages=list(conda_packages or []), channels=list(channels or []),
                   python_version=python_version,
                   pip_options=[f"--index-url {pip_indexurl}"] if pip_indexurl else [])

    def add_pip_package(self, requirement: str) -> None:
        self.pip_packages = [*self.pip_packages, requirement]

    def add_conda_package(self, package: str) -> None:
        self.conda_packages = [*self.conda_packages, package]

    def add_channel(self, channel: str) -> None:
        self.channels = [*self.channels, channel]


class PythonSection(_Model):
    """Which interpreter runs the script and which packages it needs."""

    user_managed_dependencies: bool = Field(
        False, description="Use an existing interpreter as it is; install nothing."
    )
    interpreter_path: str | None = Field(
        None, description="Interpreter of a user-managed environment (default: this Python)."
    )
    python_version: str | None = Field(
        None, description="Python version of a built environment, e.g. '3.11'."
    )
    conda_dependencies: CondaDependencies = Field(default_factory=CondaDependencies)


class DockerSection(_Model):
    """The image a container run starts from."""

    enabled: bool = Field(
        False, description="v1's switch for running in a container. Docker compute always "
        "does; local and Dask compute run in a virtualenv and say so in the build log."
    )
    base_image: str | None = Field(None, description="Image the environment is built on.")
    base_dockerfile: str | None = Field(None, description="Dockerfile text used instead.")
    build_args: dict[str, str] = Field(default_factory=dict, description="Docker build args.")


class Environment(_Model):
    """A named, versionable description of a run's software environment.

    Example:
        ```python
        env = Environment.from_pip_requirements("sk", "requirements.txt")
        env.environment_variables = {"OMP_NUM_THREADS": "1"}
        env.secret_environment_variables = {"WANDB_API_KEY": "..."}
        env.register(ws)
        ```
    """

    name: str = Field("default", description="Name of the environment.")
    version: str | None = Field(None, description="Registered version, if any.")
    python: PythonSection = Field(default_factory=PythonSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Variables set for the script (recorded)."
    )
    secret_environment_variables: dict[str, SecretStr | None] = Field(
        default_factory=dict, description="Variables set for the script, never recorded "
        "(a recorded environment names them; None: the value is not in this process)."
    )

    @field_validator("secret_environment_variables", mode="before")
    @classmethod
    def _names_from_a_record(cls, value: Any) -> Any:
        return dict.fromkeys(value) if isinstance(value, list | tuple) else value

    @field_serializer("secret_environment_variables")
    def _names_only(self, value: dict[str, SecretStr | None]) -> Any:  # names, sorted
        return sorted(value)

    def __init__(self, name: str = "default", /, **data: Any):
        super().__init__(name=data.pop("name", name), **data)

    # -- constructors -----------------------------------------------------------------------

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | Path) -> Environment:
        """An environment with the packages of a pip requirements file (``-r`` followed)."""
        packages, options = _read_requirements(Path(file_path))
        env = cls(name)
        env.python.conda_dependencies = CondaDependencies(pip_packages=packages,
                                                          pip_options=options)
        return env

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | Path) -> Environment:
        """An environment from a conda ``environment.yml``; its ``pip:`` section is honoured."""
        import yaml

        try:
            spec = yaml.safe_load(Path(file_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MLTrainError(f"cannot read conda specification {file_path}: {exc}") from exc
        env = cls(name)
        deps = CondaDependencies(channels=list(spec.get("channels") or []))
        for item in spec.get("dependencies") or []:
            if isinstance(item, dict):
                for line in item.get("pip") or []:
                    (deps.pip_options if str(line).startswith("-") else deps.pip_packages
                     ).append(str(line))
            elif re.match(r"python\b(?!-)", str(item).strip()):
                env.python.python_version = _conda_python(str(item).strip(), file_path)
            elif str(item).strip() != "pip":
                deps.conda_packages.append(str(item).strip())
        env.python.conda_dependencies = deps
        return env

    # -- identity ---------------------------------------------------------------------------

    def build_spec(self) -> BuildSpec:
        """What a build of this environment depends on (see ``BuildSpec``)."""
        deps, user = self.python.conda_dependencies, self.python.user_managed_dependencies
        python = self.python.python_version or deps.python_version
        if deps.python_version and python != deps.python_version:
            raise MLTrainError(
                f"environment {self.name!r} asks for Python {self.python.python_version} "
                f"(python.python_version) and {deps.python_version} (its conda "
                "dependencies): keep one of them")
        return BuildSpec(
            name=self.name, user_managed=user,
            interpreter=self.python.interpreter_path if user else None,
            python=python, channels=tuple(deps.channels),
            conda=tuple(sorted(_normalize(p) for p in deps.conda_packages)),
            pip=tuple(sorted(_normalize(p) for p in deps.pip_packages)),
            pip_options=tuple(deps.pip_options), base_image=self.docker.base_image,
            base_dockerfile=self.docker.base_dockerfile, build_args=dict(self.docker.build_args))

    def spec_hash(self) -> str:
        """Content hash of what gets built: name, version, order and variables excluded."""
        return self.build_spec().hash

    @property
    def needs_build(self) -> bool:
        return not self.python.user_managed_dependencies

    def build_notes(self) -> list[str]:
        """Lines for the top of a build log: what this environment stands for."""
        ours = curated_name(self.name)
        if ours is None:
            return []
        deps = self.python.conda_dependencies
        return [f"environment {self.name}: Azure's curated environment is prefect-mltrain's "
                f"{ours} here (Python {self.python.python_version}; "
                f"{', '.join(deps.pip_packages) or 'no packages'})"]

    # -- records and files ------------------------------------------------------------------

    def secrets(self) -> dict[str, str]:
        """The secret variables whose values this process has."""
        return {k: v.get_secret_value() for k, v in self.secret_environment_variables.items()
                if v is not None}

    def process_env(self) -> dict[str, str]:
        """Variables to add to the script's process environment."""
        return {**self.environment_variables, **self.secrets()}

    def save_to_directory(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``environment.json`` (and ``requirements.txt``) to ``path``."""
        folder = Path(path)
        target = folder / "environment.json"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: pass overwrite=True to replace it")
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(self.model_dump_json(indent=1))
        deps = self.python.conda_dependencies
        if deps.pip_packages or deps.pip_options:
            (folder / "requirements.txt").write_text(
                "\n".join([*deps.pip_options, *deps.pip_packages]) + "\n")
        return folder

    @classmethod
    def load_from_directory(cls, path: str | Path) -> Environment:
        return cls.model_validate_json((Path(path) / "environment.json").read_text())

    # -- registry ---------------------------------------------------------------------------

    def register(self, workspace: Workspace) -> Environment:
        """Store this spec as the next version of its name (unchanged specs keep theirs)."""
        versions = _versions(workspace, self.name)
        if versions:
            latest = Environment.get(workspace, self.name, str(versions[-1]))
            if latest.spec_hash() == self.spec_hash() and latest.environment_variables == \
                    self.environment_variables:
                self.version = latest.version
                return self
        self.version = str((versions[-1] if versions else 0) + 1)
        workspace.write_bytes(f"environments/{self.name}/{self.version}.json",
                              self.model_dump_json(indent=1).encode())
        return self

    @classmethod
    def get(cls, workspace: Workspace | None, name: str, version: str | int | None = None
            ) -> Environment:
        """A registered environment (latest version by default), or a curated one by name.

        Azure's curated names (``AzureML-sklearn-*``, ``AzureML-pytorch-*``,
        ``AzureML-tensorflow-*``, ``AzureML-Minimal``) give the matching ``mltrain-*``
        environment under the name asked for; its build log says which one it is.
        """
        curated = CURATED_DIR / f"{name}.json"
        if curated.is_file() and version is None:
            return cls.model_validate_json(curated.read_text())
        if name.lower().startswith("azureml-") and not (
                workspace is not None and _versions(workspace, name)):
            ours = curated_name(name)
            if ours is None:
                raise MLTrainError(
                    f"no curated environment stands for Azure's {name!r}: the Azure ones "
                    "that map are AzureML-sklearn-*, AzureML-pytorch-*, AzureML-tensorflow-* "
                    "and AzureML-Minimal; for others declare the packages, e.g. "
                    "Environment.from_pip_requirements(name, 'requirements.txt')")
            env = cls.model_validate_json((CURATED_DIR / f"{ours}.json").read_text())
            env.name = name
            return env
        versions = _versions(workspace, name) if workspace is not None else []
        wanted = int(version) if version is not None else (versions[-1] if versions else None)
        if wanted not in versions:
            known = ", ".join(sorted(cls.list(workspace))) if workspace is not None else ""
            raise MLTrainError(
                f"no environment {name!r}" + (f" version {version}" if version else "")
                + f"; known: {known or 'none'}. Register it with env.register(ws)"
            )
        return cls.model_validate(workspace.read_json(f"environments/{name}/{wanted}.json"))

    @classmethod
    def list(cls, workspace: Workspace | None = None) -> dict[str, Environment]:
        """Curated and registered environments by name (latest versions)."""
        out = {p.stem: cls.get(None, p.stem) for p in sorted(CURATED_DIR.glob("*.json"))}
        if workspace is not None:
            for name in workspace.list_dir("environments"):
                if _versions(workspace, name):
                    out[name] = cls.get(workspace, name)
        return out

    def build_local(self, workspace: Workspace | None = None, use_docker: bool = False
                    ) -> BuiltEnvironment | BuiltImage:
        """Build (or find in the cache) this environment: a virtualenv, or (``use_docker``)
        an image on the local Docker engine."""
        if use_docker:
            return build_image(self.build_spec())
        return build_environment(self.build_spec())


def _conda_python(item: str, file_path: str | Path) -> str | None:
    """The version a conda ``python`` entry pins (``python=3.11``, ``python==3.11.*``,
    ``python 3.11``, ``python=3.11.5=h955ad1f_0``), or None for a bare ``python``; a range
    is refused rather than guessed."""
    if item == "python":
        return None
    match = re.fullmatch(r"python\s*(?:==?|\s)\s*(\d+(?:\.\d+)*)(?:\.\*)?(?:=\S+)?", item)
    if not match:
        raise MLTrainError(
            f"{file_path}: cannot honour {item!r}: pin one Python version, e.g. "
            "'python=3.11' (a built environment gets exactly that interpreter)")
    return match.group(1)


def curated_name(name: str) -> str | None:
    """Our curated environment standing for an Azure ML curated one (``AzureML-...``)."""
    lowered = name.lower()
    for prefixes, ours in _AZURE_CURATED:
        if lowered.startswith(prefixes):
            return ours
    return None


_AZURE_CURATED = (
    (("azureml-sklearn", "azureml-scikit-learn"), "mltrain-sklearn"),
    (("azureml-pytorch", "azureml-acpt-pytorch"), "mltrain-pytorch-cpu"),
    (("azureml-tensorflow",), "mltrain-tensorflow-cpu"),
    (("azureml-minimal", "azureml-tutorial"), "mltrain-minimal"),
)


def _versions(workspace: Workspace, name: str) -> list[int]:
    names = workspace.list_dir(f"environments/{name}")
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _normalize(requirement: str) -> str:
    """``Scikit_Learn >= 1.0`` and ``scikit-learn>=1.0`` are one requirement."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return " ".join(requirement.split())
    req.name = canonicalize_name(req.name)
    return str(req)


def _read_requirements(path: Path, seen: set[Path] | None = None) -> tuple[list[str], list[str]]:
    seen = seen or set()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise MLTrainError(f"cannot read requirements file {path}: {exc}") from exc
    seen.add(path.resolve())
    packages: list[str] = []
    options: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            nested = (path.parent / line.split(None, 1)[1]).resolve()
            if nested not in seen:
                more, more_options = _read_requirements(nested, seen)
                packages += more
                options += more_options
        elif line.startswith("-"):
            options.append(line)
        else:
            packages.append(line)
    return packages, options
