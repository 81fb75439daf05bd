"""A Hydra sweep as one MLflow run with a child run per job, and a summary of the sweep.

`SweepRun` is a Hydra callback (registered under `hydra.callbacks` in conf/config.yaml). Before the
first job it opens the sweep's parent run and writes its id to <sweep dir>/mlflow_parent.json; each
job (`python -m pipeline`, whatever launcher runs it) reads that file and opens its own run as a
child of it. After the last job it writes <sweep dir>/summary.csv (one row per job and temperature:
the params that vary across the sweep, the validation loss and the sample metrics), the same table as
an MLflow table (summary.json) and two plots: best validation loss against maxlen
(val_loss_vs_maxlen.png) and the sample metrics against temperature (sample_metrics_vs_temperature.png),
all logged to the parent run, which then ends FINISHED, or FAILED when a job failed.
"""
from __future__ import annotations

import atexit
import csv
import io
import json
from pathlib import Path

from hydra.experimental.callback import Callback

from pipeline import artifacts, tracking
from pipeline.sample_metrics import NAMES as SAMPLE_METRICS

PARENT_FILE = "mlflow_parent.json"
MODEL_METRICS = ("best_val_loss", "best_val_bpc")


def sweep_dir(hydra_cfg) -> Path:
    """The sweep's folder as the launcher and every job see it (`hydra.sweep.dir`, relative to the
    folder the sweep was launched from)."""
    return Path(hydra_cfg.runtime.cwd) / hydra_cfg.sweep.dir


def parent_run(folder: Path) -> dict:
    """The sweep in `folder` as its callback recorded it: {"run_id": the parent run, "swept": the
    keys the sweep varies, ...}; empty when there is none (the callback was removed)."""
    marker = folder / PARENT_FILE
    return json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else {}


def job_name(overrides: list[str], swept: list[str]) -> str | None:
    """A job's run name: its values of the swept keys, short (`T=0.5 maxlen=40`)."""
    values = dict(o.lstrip("+~").split("=", 1) for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept)
    return tracking.short_names(values) or None


class SweepRun(Callback):
    def __init__(self) -> None:
        self.client = self.run_id = self.folder = None

    def on_multirun_start(self, config, **kwargs) -> None:
        import mlflow
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.folder = sweep_dir(config.hydra)
        uri = tracking.resolve_uri(config.mlflow.tracking_uri, Path(config.hydra.runtime.cwd))
        experiment_id = tracking.connect(uri, config.mlflow.experiment)  # a bad store stops the sweep here
        self.client = mlflow.MlflowClient(uri)
        overrides = list(config.hydra.overrides.task)
        swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
        run = self.client.create_run(experiment_id, run_name=f"sweep {self.folder.name}",
                                     tags={"sweep": str(self.folder), "sweep.parent": "true",
                                           "overrides": " ".join(overrides), "sweep.keys": " ".join(swept)})
        self.run_id = run.info.run_id
        artifacts.write_json(self.folder / PARENT_FILE, {"run_id": self.run_id, "swept": swept, "tracking_uri": uri,
                                                         "experiment_id": experiment_id})
        print(f"sweep: MLflow parent run {self.run_id} ({uri})", flush=True)
        # A failed job stops Hydra before on_multirun_end: end the parent run anyway, as FAILED.
        atexit.register(self._finish, "FAILED")

    def on_multirun_end(self, config, **kwargs) -> None:
        self._finish("FINISHED")

    def _finish(self, status: str) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        try:
            children = self.client.search_runs(
                [self.client.get_run(run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                max_results=10_000)
            if any(c.info.status != "FINISHED" for c in children):
                status = "FAILED"
            if children:
                summarize(self.client, run_id, children, self.folder)
        finally:
            self.client.set_terminated(run_id, status)


def summary_rows(children) -> list[dict]:
    """One row per (job, temperature): job number, run id, status, maxlen and the other params whose
    values differ between jobs, the temperature, the model's best validation figures and the sample metrics."""
    params = [c.data.params for c in children]
    varying = sorted(k for k in set().union(*params) if not k.startswith("mlflow.")
                     and len({p.get(k) for p in params}) > 1 and k not in ("sample.temperature", "vectorize.maxlen"))
    rows = []
    for c in sorted(children, key=lambda c: int(c.data.tags.get("sweep.job", 0))):
        m = c.data.metrics
        temperatures = sorted({float(k.rsplit(".t", 1)[1]) for k in m if k.startswith("sample.nll_per_char.t")})
        for t in temperatures or [None]:
            row = {"job": c.data.tags.get("sweep.job", ""), "run_id": c.info.run_id, "status": c.info.status,
                   "vectorize.maxlen": int(c.data.params.get("vectorize.maxlen", 0)),
                   **{k: c.data.params.get(k, "") for k in varying}, "temperature": t,
                   "train": c.data.tags.get("stage.train", "")}
            row.update({k: m.get(k) for k in MODEL_METRICS})
            row.update({k: m.get(f"sample.{k}.t{t}") for k in SAMPLE_METRICS})
            rows.append(row)
    return rows


def summarize(client, run_id: str, children, folder: Path) -> list[dict]:
    """Write the summary table and plots into `folder` and log them, with the best validation loss
    of the sweep and the run that reached it, to the parent run."""
    rows = summary_rows(children)
    columns = list(rows[0])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_text(folder / "summary.csv", out.getvalue())
    client.log_artifact(run_id, str(folder / "summary.csv"))
    client.log_table(run_id, {k: [r[k] for r in rows] for k in columns}, "summary.json")
    figures = plots(rows)
    import matplotlib.pyplot as plt  # after plots() chose the Agg backend

    for name, figure in figures.items():
        with artifacts.atomic_path(folder / name) as tmp:
            figure.savefig(tmp, dpi=100)
        plt.close(figure)
        client.log_artifact(run_id, str(folder / name))
    scored = [r for r in rows if r["best_val_loss"] is not None]
    if scored:
        best = min(scored, key=lambda r: r["best_val_loss"])
        client.log_metric(run_id, "best_val_loss", best["best_val_loss"])
        client.set_tag(run_id, "sweep.best_run", best["run_id"])
    client.log_metric(run_id, "jobs", len(children))
    return rows


def plots(rows: list[dict]) -> dict:
    """The sweep's two figures: best validation loss against maxlen (one point per model), and each
    sample metric against temperature (one line per combination of the other varying params)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = {"job", "run_id", "status", "temperature", "train", *MODEL_METRICS, *SAMPLE_METRICS}
    # The params that vary: maxlen and whatever else was swept besides the temperature.
    others = [k for k in rows[0] if k not in fixed]

    def label(row, skip=()):
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in others if k not in skip) or "all jobs"

    loss, ax = plt.subplots(figsize=(5, 3.5))
    models = {}
    for r in rows:
        if r["best_val_loss"] is not None:
            models.setdefault(label(r, skip=("vectorize.maxlen",)), {})[r["vectorize.maxlen"]] = r["best_val_loss"]
    for name, points in sorted(models.items()):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], "o-", label=name)
    ax.set(xlabel="vectorize.maxlen", ylabel="best val_loss (nats/char)", title="validation loss against maxlen")
    if models:  # no job trained (all failed): an empty plot, without matplotlib's warning
        ax.legend(fontsize=7)
    loss.tight_layout()

    metrics, axes = plt.subplots(2, 4, figsize=(14, 6))
    lines = {}
    for r in rows:
        if r["temperature"] is not None:
            lines.setdefault(label(r), []).append(r)
    for ax, metric in zip(axes.flat, SAMPLE_METRICS):
        for name, line in sorted(lines.items()):
            line = sorted(line, key=lambda r: r["temperature"])
            ax.plot([r["temperature"] for r in line], [r[metric] for r in line], "o-", label=name)
        ax.set(xlabel="temperature", title=metric)
    axes.flat[-1].axis("off")
    if lines:
        axes.flat[-1].legend(*axes.flat[0].get_legend_handles_labels(), loc="center", fontsize=8)
    metrics.suptitle("sample metrics against temperature")
    metrics.tight_layout()
    return {"val_loss_vs_maxlen.png": loss, "sample_metrics_vs_temperature.png": metrics}
