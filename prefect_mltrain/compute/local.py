"""The default target: the script runs as a local process tree."""

from __future__ import annotations

from .base import ComputeTarget, Job, LaunchSpec
from .process import GuardedProcess


class LocalCompute(ComputeTarget):
    """Run on this machine, in the restored snapshot, as its own process group.

    Example:
        ```python
        ScriptRunConfig(source_directory="proj", script="train.py", compute_target="local")
        ```
    """

    _block_type_name = "Local Compute"
    _block_type_slug = "mltrain-local-compute"
    _description = "Runs prefect-mltrain training scripts as local processes."

    def launch(self, spec: LaunchSpec) -> Job:
        return GuardedProcess(spec.argv, cwd=spec.cwd, env=spec.env)
