"""A Hydra sweep as one MLflow run with a child run per job, and a summary of the sweep.

`SweepRun` is a Hydra callback (registered under `hydra.callbacks` in conf/config.yaml). Before the
first job it opens the sweep's parent run and writes its id to <sweep dir>/mlflow_parent.json; each
job (`python -m pipeline`, whatever launcher runs it) reads that file and opens its own run as a
child of it. After the last job it writes <sweep dir>/summary.csv (the table of the generator's
`summary` module: for the text generator one row per job and temperature with the params that vary,
the validation loss and the sample metrics; for the VAE one row per job with its likelihood bounds),
the same table as an MLflow table (summary.json) and the generator's plots, all logged to the
parent run, which then ends FINISHED, or FAILED when a job failed. The sweep's runs are in its
generator's experiment.
"""
from __future__ import annotations

import atexit
import csv
import io
import json
from pathlib import Path

from hydra.experimental.callback import Callback

from pipeline import artifacts, generators, tracking

PARENT_FILE = "mlflow_parent.json"


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
    """A job's run name: its values of the swept keys, short (`T=0.5 maxlen=40`), each key without
    its generator's section (`text.sample.temperature` is the run's param `sample.temperature`)."""
    values = dict(o.lstrip("+~").split("=", 1) for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept)
    return tracking.short_names({_in_section(k): v for k, v in values.items()}) or None


def _in_section(key: str) -> str:
    first, _, rest = key.partition(".")
    return rest if rest and first in generators.GENERATORS else key


class SweepRun(Callback):
    def __init__(self) -> None:
        self.client = self.run_id = self.folder = self.generator = None

    def on_multirun_start(self, config, **kwargs) -> None:
        import mlflow
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.folder = sweep_dir(config.hydra)
        uri = tracking.resolve_uri(config.mlflow.tracking_uri, Path(config.hydra.runtime.cwd))
        self.generator = config.generator
        experiment = config[config.generator].mlflow.experiment  # the sweep's generator's
        experiment_id = tracking.connect(uri, experiment)  # a bad store stops the sweep here
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
                summarize(self.client, run_id, children, self.folder, generators.summary(self.generator))
        finally:
            self.client.set_terminated(run_id, status)


def varying_params(children) -> list[str]:
    """The params whose values differ between a sweep's child runs (MLflow's own keys aside), sorted:
    the columns every generator's summary shows."""
    params = [c.data.params for c in children]
    return sorted(k for k in set().union(*params) if not k.startswith("mlflow.") and len({p.get(k) for p in params}) > 1)


def summarize(client, run_id: str, children, folder: Path, summary) -> list[dict]:
    """Write the summary table and plots of the generator's `summary` module into `folder` and log
    them, with the sweep's best score (`summary.SCORE`, lowest wins) and the run that reached it,
    to the parent run."""
    rows = summary.rows(children)
    columns = list(rows[0])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_text(folder / "summary.csv", out.getvalue())
    client.log_artifact(run_id, str(folder / "summary.csv"))
    client.log_table(run_id, {k: [r[k] for r in rows] for k in columns}, "summary.json")
    figures = summary.figures(rows)
    import matplotlib.pyplot as plt  # after figures() chose the Agg backend

    for name, figure in figures.items():
        with artifacts.atomic_path(folder / name) as tmp:
            figure.savefig(tmp, dpi=100)
        plt.close(figure)
        client.log_artifact(run_id, str(folder / name))
    scored = [r for r in rows if r[summary.SCORE] is not None]
    if scored:
        best = min(scored, key=lambda r: r[summary.SCORE])
        client.log_metric(run_id, summary.SCORE, best[summary.SCORE])
        client.set_tag(run_id, "sweep.best_run", best["run_id"])
    client.log_metric(run_id, "jobs", len(children))
    return rows


