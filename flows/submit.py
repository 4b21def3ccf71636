"""Deployable entry point: the ``submit-run`` flow of prefect-mltrain, one run per flow run.

Deployed by ``deployments/prefect.yaml`` (and, per compute target, by ``mltrain compute
create``). A run triggered from the UI takes the experiment name and a ``ScriptRunConfig``
form; its ``source_directory`` must exist on the worker's machine.
"""

from prefect_mltrain.flows import submit_run

__all__ = ["submit_run"]

if __name__ == "__main__":
    submit_run.serve(name="local")
