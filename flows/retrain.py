"""Scheduled retraining: train again, and promote the run if it beats the best so far.

Deployed with a (paused) nightly schedule by ``deployments/prefect.yaml``. The training
run is a ``submit-run`` subflow, so the Prefect UI shows it, its logs and its artifacts
under this flow run; the promotion is a tag (``best=true``) on the winning run.
"""

from typing import Literal

from prefect import flow, get_run_logger

from prefect_mltrain import Experiment, ScriptRunConfig, submit_run
from prefect_mltrain.workspace import open_workspace


@flow(name="retrain")
def retrain(source_directory: str, script: str = "train.py", arguments: list[str] | None = None,
            experiment: str = "retrain", compute_target: str = "local",
            metric: str = "loss", goal: Literal["minimize", "maximize"] = "minimize",
            workspace: str | None = None) -> dict:
    """Train once more; tag the run ``best=true`` if its final ``metric`` beats every
    earlier run's (lower when ``goal`` is minimize)."""
    config = ScriptRunConfig(source_directory=source_directory, script=script,
                             arguments=arguments or [], compute_target=compute_target)
    details = submit_run(experiment=experiment, config=config, workspace=workspace)
    exp = Experiment(open_workspace(workspace), experiment)
    sign = 1 if goal == "minimize" else -1

    def score(run) -> float | None:
        value = run.get_metrics().get(metric)
        value = value[-1] if isinstance(value, list) else value
        return sign * value if isinstance(value, int | float) else None

    new = next(r for r in exp.get_runs() if r.id == details["run_id"])
    earlier = [s for r in exp.get_runs(status="Completed") if r.id != new.id
               if (s := score(r)) is not None]
    mine = score(new)
    promoted = mine is not None and all(mine < s for s in earlier)
    if promoted:
        for run in exp.get_runs(tags={"best": "true"}):
            run.tag("best", "false")
        new.tag("best", "true")
    get_run_logger().info("%s %s = %s: %s", new.id, metric, sign * mine if mine is not None
                          else None, "promoted" if promoted else "not better than the best")
    return {"run_id": new.id, metric: sign * mine if mine is not None else None,
            "promoted": promoted}


if __name__ == "__main__":
    retrain.serve(name="nightly", cron="0 3 * * *")
