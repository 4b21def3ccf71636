"""The Python environment a run's script executes in.

An ``Environment`` declares an interpreter (user-managed) or the packages to install, the
Docker image to use, and environment variables. Secret variables reach the script's
process only: they are never written to the run record, Prefect parameters or logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .errors import EnvironmentBuildError
from .home import cache_dir


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PythonSection(_Model):
    """Which interpreter runs the script and which packages it needs."""

    user_managed_dependencies: bool = Field(
        False, description="Use an existing interpreter as it is; install nothing."
    )
    interpreter_path: str | None = Field(
        None, description="Interpreter of a user-managed environment (default: this Python)."
    )
    pip_packages: list[str] = Field(default_factory=list, description="pip requirements.")


class DockerSection(_Model):
    """The image a container run starts from."""

    base_image: str | None = Field(None, description="Image the environment is built on.")
    base_dockerfile: str | None = Field(None, description="Dockerfile text used instead.")


class Environment(_Model):
    """A named, versionable description of a run's software environment.

    Example:
        ```python
        env = Environment("user-managed-env")
        env.python.user_managed_dependencies = True
        env.environment_variables = {"OMP_NUM_THREADS": "1"}
        env.secret_environment_variables = {"WANDB_API_KEY": "..."}
        ```
    """

    name: str = Field("default", description="Name of the environment.")
    version: str | None = Field(None, description="Registered version, if any.")
    python: PythonSection = Field(default_factory=PythonSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Variables set for the script (recorded)."
    )
    secret_environment_variables: dict[str, SecretStr] = Field(
        default_factory=dict, description="Variables set for the script, never recorded."
    )

    def __init__(self, name: str = "default", /, **data: Any):
        super().__init__(name=data.pop("name", name), **data)

    def record(self) -> dict[str, Any]:
        """The JSON form kept with a run: secret names only, never their values."""
        data = self.model_dump(mode="json", exclude={"secret_environment_variables"})
        data["secret_environment_variables"] = sorted(self.secret_environment_variables)
        return data

    def secrets(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.secret_environment_variables.items()}

    def process_env(self) -> dict[str, str]:
        """Variables to add to the script's process environment."""
        return {**self.environment_variables, **self.secrets()}


def resolve_interpreter(env: Environment | None) -> str:
    """The interpreter that runs the script (no environment given: the default one).

    The default environment is the interpreter that runs prefect-mltrain itself, so a
    script sees exactly the packages installed next to it.
    """
    if env is None or env.python.user_managed_dependencies or not env.python.pip_packages:
        python = (env.python.interpreter_path if env else None) or sys.executable
        if not Path(python).exists():
            raise EnvironmentBuildError(
                f"interpreter {python!r} of environment {env.name!r} does not exist: fix "
                "python.interpreter_path or leave it empty to use this Python"
            )
        return python
    raise EnvironmentBuildError(
        f"environment {env.name!r} asks for packages {env.python.pip_packages}, but this "
        "version runs user-managed environments only: install them into an interpreter and "
        "set python.user_managed_dependencies = True with python.interpreter_path"
    )


def run_context_path() -> str:
    """A folder holding only ``prefect_mltrain``, for PYTHONPATH of foreign interpreters.

    ``Run.get_context()`` needs the standard library only, so any Python 3 can import it
    from here without seeing the rest of this interpreter's site-packages.
    """
    folder = cache_dir("pythonpath")
    link = folder / "prefect_mltrain"
    package = Path(__file__).resolve().parent
    if not link.is_symlink() or link.resolve() != package:
        tmp = folder / f".link-{id(folder)}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(package)
        tmp.replace(link)
    return str(folder)
