"""The text generator's sweep summary (`pipeline.sweep` writes and logs it): one row per job and
temperature, and two plots: best validation loss against maxlen, and the sample metrics against
temperature."""
from __future__ import annotations

from pipeline.text.sample_metrics import NAMES as SAMPLE_METRICS

MODEL_METRICS = ("best_val_loss", "best_val_bpc")
SCORE = "best_val_loss"  # the sweep's best job: the lowest of it


def rows(children) -> list[dict]:
    """One row per (job, temperature): job number, run id, status, maxlen and the other params whose
    values differ between jobs, the temperature, the model's best validation figures and the sample metrics."""
    from pipeline.sweep import varying_params

    varying = [k for k in varying_params(children) if k not in ("sample.temperature", "vectorize.maxlen")]
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


def figures(rows: list[dict]) -> dict:
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
