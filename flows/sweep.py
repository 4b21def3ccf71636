"""Deployable entry point: the ``hyperdrive`` flow of prefect-mltrain, one sweep per flow run.

Deployed by ``deployments/prefect.yaml``. A sweep started from the UI takes the
experiment name, the trials' ``ScriptRunConfig`` and the sweep (sampling, policy, primary
metric, limits) as a validated form; the controller runs on the worker, each trial on its
compute target, shown as a subflow run. Retrying a sweep's flow run whose controller died
continues that sweep.
"""

from prefect_mltrain.hyperdrive.flow import hyperdrive

__all__ = ["hyperdrive"]
