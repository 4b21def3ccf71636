"""Background runner: ``python -m prefect_mltrain.runner EXPERIMENT RUN_ID``.

Started by ``Experiment.submit`` (forked from a warm runner when one is up, see
``warm.py``); runs the ``submit_run`` flow for one prepared run. Secrets arrive in
``MLTRAIN_SECRETS`` (this process's environment only) and go to the script's process,
never to Prefect parameters.
"""

import os
import sys


def run(experiment: str, run_id: str) -> None:
    from .flows import open_workspace, submit_run

    ws = open_workspace(None)
    submit_run(experiment=experiment, run_id=run_id, workspace=ws.url, return_state=True)


if __name__ == "__main__":
    try:
        run(sys.argv[1], sys.argv[2])
    finally:
        from . import warm

        warm.ensure_running(dict(os.environ))
