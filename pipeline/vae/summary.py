"""The VAE's sweep summary (`pipeline.sweep` writes and logs it): one row per job with the params
that vary and the test set's bounds, and a plot of the bounds per job."""
from __future__ import annotations

METRICS = ("test_neg_elbo", "test_iwae_nll", "best_val_loss")
SCORE = "test_iwae_nll"  # the sweep's best job: the tightest likelihood bound, lowest wins


def rows(children) -> list[dict]:
    from pipeline.sweep import varying_params

    varying = varying_params(children)
    out = []
    for c in sorted(children, key=lambda c: int(c.data.tags.get("sweep.job", 0))):
        row = {"job": c.data.tags.get("sweep.job", ""), "run_id": c.info.run_id, "status": c.info.status,
               **{k: c.data.params.get(k, "") for k in varying}, "train": c.data.tags.get("stage.train", "")}
        row.update({k: c.data.metrics.get(k) for k in METRICS})
        out.append(row)
    return out


def figures(rows: list[dict]) -> dict:
    """The negative ELBO and the IWAE bound of every job, labelled by what it varies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = {"job", "run_id", "status", "train", *METRICS}
    others = [k for k in rows[0] if k not in fixed]
    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others) or f"job {r['job']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.8))
    xs = range(len(rows))
    for metric, marker in (("test_neg_elbo", "o"), ("test_iwae_nll", "s")):
        ax.plot(xs, [r[metric] if r[metric] is not None else float("nan") for r in rows], marker, label=metric)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="nats per test digit", title="test-set bounds on -log p(x) per job (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return {"bounds_per_job.png": fig}
