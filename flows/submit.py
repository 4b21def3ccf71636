"""Deployable entry point: the ``submit_run`` flow of prefect-mltrain.

Deploy it with ``deployments/prefect.yaml``; a run triggered from the UI takes the
experiment name and a ``ScriptRunConfig`` form (source_directory must exist on the
worker's machine).
"""

from prefect_mltrain.flows import submit_run

__all__ = ["submit_run"]

if __name__ == "__main__":
    submit_run.serve(name="local")
