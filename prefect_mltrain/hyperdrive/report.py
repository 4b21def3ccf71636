"""What a person looks at while a sweep runs and after: the table of trials (a Prefect
artifact and the terminal's live table) and two pictures in the sweep's ``outputs/`` —
the primary metric of every trial by interval, and parameters against the metric
(parallel coordinates). The pictures need matplotlib (``prefect-mltrain[hyperdrive]``);
without it the sweep runs the same and says so once.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from ..layout import OUTPUTS, run_dir
from ..workspace import Workspace

CURVES_PNG = "hyperdrive_curves.png"
PARALLEL_PNG = "hyperdrive_parallel_coordinates.png"


def sorted_rows(rows: list[dict[str, Any]], maximize: bool) -> list[dict[str, Any]]:
    """Trials best first; trials without the metric last, in trial order."""
    scored = [r for r in rows if r.get("best") is not None]
    scored.sort(key=lambda r: (-r["best"] if maximize else r["best"], r["trial"]))
    return scored + sorted((r for r in rows if r.get("best") is None),
                           key=lambda r: r["trial"])


def table(rows: list[dict[str, Any]], maximize: bool, metric: str) -> list[dict[str, Any]]:
    """The trial table as flat rows (one column per hyperparameter)."""
    out = []
    for row in sorted_rows(rows, maximize):
        flat = {"trial": row["trial"], "status": row["status"], metric: row["best"],
                "intervals": row["intervals"]}
        flat.update({name: value for name, value in row["parameters"].items()})
        flat["run_id"] = row["run_id"]
        out.append(flat)
    return out


def rich_table(state: dict[str, Any]) -> Any:
    from rich.table import Table

    metric = state["primary_metric_name"]
    rows = table(state["trials"], state["primary_metric_goal"] == "MAXIMIZE", metric)
    names = sorted({k for r in state["trials"] for k in r["parameters"]})
    view = Table(title=f"Sweep: {metric} ({state['primary_metric_goal'].lower()})")
    for column in ("trial", *names, metric, "intervals", "status"):
        view.add_column(column)
    for row in rows:
        best = row[metric]
        view.add_row(str(row["trial"]), *(str(row.get(n, "")) for n in names),
                     "" if best is None else f"{best:.6g}", str(row["intervals"]), row["status"])
    return view


def publish(ws: Workspace, experiment: str, sweep_id: str, state: dict[str, Any],
            final: bool) -> None:
    """The sweep's table artifact in Prefect (a new version after each trial event) and,
    at the end, the pictures and a markdown artifact that shows where they are."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    metric = state["primary_metric_name"]
    maximize = state["primary_metric_goal"] == "MAXIMIZE"
    key = sweep_id.lower().replace("_", "-")[-60:].strip("-")
    rows = [{k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in r.items()}
            for r in table(state["trials"], maximize, metric)]
    create_table_artifact(key=f"sweep-{key}", table=rows or [{"trial": None}],
                          description=f"Trials of sweep {sweep_id}, best {metric} first")
    if not final:
        return
    pictures = save_pictures(ws, experiment, sweep_id, state)
    best = rows[0] if rows and rows[0].get(metric) is not None else None
    text = f"# Sweep `{sweep_id}`\n\n{len(rows)} trials; primary metric `{metric}` " \
           f"({state['primary_metric_goal'].lower()}).\n"
    if best:
        text += f"\nBest: trial {best['trial']} (`{best['run_id']}`), {metric} = {best[metric]}\n"
    for name in pictures:
        text += f"\n- `{ws.path(run_dir(experiment, sweep_id), OUTPUTS, name)}`"
    if not pictures:
        text += "\n(pictures need matplotlib: pip install 'prefect-mltrain[hyperdrive]')\n"
    create_markdown_artifact(key=f"sweep-summary-{key}", markdown=text,
                             description=f"Sweep {sweep_id}")


def save_pictures(ws: Workspace, experiment: str, sweep_id: str,
                  state: dict[str, Any]) -> list[str]:
    """Write the two pictures into the sweep's ``outputs/``; their names (none without
    matplotlib, or without any logged metric)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return []
    trials = [t for t in state["trials"] if t.get("curve")]
    if not trials:
        return []
    metric = state["primary_metric_name"]
    saved = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for t in trials:
        ax.plot(range(1, len(t["curve"]) + 1), t["curve"], marker=".",
                label=f"{t['trial']} ({t['status']})")
    ax.set(xlabel="interval (each logged value)", ylabel=metric,
           title=f"{metric} per trial, sweep {sweep_id}")
    if len(trials) <= 20:
        ax.legend(fontsize="small")
    saved.append(_store_figure(ws, experiment, sweep_id, CURVES_PNG, fig, plt))
    names = sorted({k for t in trials for k in t["parameters"]})
    scored = [t for t in trials if t.get("best") is not None]
    if names and scored:
        fig, ax = plt.subplots(figsize=(max(6, 2 * len(names) + 2), 5))
        columns = names + [metric]
        values = {n: [_number(t["parameters"].get(n), n, scored) for t in scored] for n in names}
        values[metric] = [t["best"] for t in scored]
        lo = {c: min(values[c]) for c in columns}
        span = {c: (max(values[c]) - lo[c]) or 1.0 for c in columns}
        cmap = plt.get_cmap("viridis")
        best_lo, best_span = lo[metric], span[metric]
        for i in range(len(scored)):
            ys = [(values[c][i] - lo[c]) / span[c] for c in columns]
            ax.plot(range(len(columns)), ys, color=cmap((values[metric][i] - best_lo) / best_span),
                    alpha=0.8)
        ax.set_xticks(range(len(columns)), columns)
        ax.set(ylabel="scaled to each axis' range",
               title=f"hyperparameters vs {metric} (color: {metric})")
        saved.append(_store_figure(ws, experiment, sweep_id, PARALLEL_PNG, fig, plt))
    return saved


def _number(value: Any, name: str, trials: list[dict[str, Any]]) -> float:
    """A parameter's value on its axis: itself if numeric, else its rank among the values."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    labels = sorted({str(t["parameters"].get(name)) for t in trials})
    return float(labels.index(str(value)))


def _store_figure(ws: Workspace, experiment: str, sweep_id: str, name: str, fig: Any,
                  plt: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    ws.write_bytes(f"{run_dir(experiment, sweep_id)}/{OUTPUTS}/{name}", buffer.getvalue())
    return name
