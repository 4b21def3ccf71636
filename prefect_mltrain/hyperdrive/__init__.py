"""HyperDrive: hyperparameter sweeps whose trials are ordinary runs, as in Azure ML v1.

``parameters`` holds the distributions, ``sampling`` the samplers (random, grid, Bayesian
through Optuna), ``policies`` early termination, ``config`` ``HyperDriveConfig``,
``controller`` the loop that runs a sweep, ``flow`` its Prefect flow and ``report`` its
table and pictures. ``HyperDriveRun`` lives beside ``Run`` (``prefect_mltrain.run``).

Example:
    ```python
    from prefect_mltrain.hyperdrive import (HyperDriveConfig, RandomParameterSampling,
                                            BanditPolicy, PrimaryMetricGoal, choice, loguniform)
    ps = RandomParameterSampling({"--lr": loguniform(-6, -1), "--batch": choice(16, 32)})
    hd = HyperDriveConfig(run_config=src, hyperparameter_sampling=ps,
                          policy=BanditPolicy(slack_factor=0.1),
                          primary_metric_name="accuracy",
                          primary_metric_goal=PrimaryMetricGoal.MAXIMIZE, max_total_runs=20,
                          max_concurrent_runs=4)
    hd_run = experiment.submit(hd)
    hd_run.wait_for_completion(show_output=True)
    best = hd_run.get_best_run_by_primary_metric()
    ```
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "HyperDriveConfig": "config",
    "HyperDriveRun": ".run",
    "RandomParameterSampling": "sampling",
    "GridParameterSampling": "sampling",
    "BayesianParameterSampling": "sampling",
    "BanditPolicy": "policies",
    "MedianStoppingPolicy": "policies",
    "TruncationSelectionPolicy": "policies",
    "NoTerminationPolicy": "policies",
    "PrimaryMetricGoal": "policies",
}
_EXPORTS.update({name: "parameters" for name in (
    "choice", "randint", "uniform", "quniform", "loguniform", "qloguniform", "normal",
    "qnormal", "lognormal", "qlognormal")})
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)
