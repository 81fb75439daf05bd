"""DeepDream's sweep summary (`pipeline.sweep` writes and logs it): one row per job with the params
that vary and its activation gain, and a plot of the gain per job."""
from __future__ import annotations

SCORE = "seconds_per_step"  # a dream has no lower-is-better quality: the sweep names its fastest job


def rows(children) -> list[dict]:
    from pipeline.sweep import varying_params

    varying = varying_params(children)
    out = []
    for c in sorted(children, key=lambda c: int(c.data.tags.get("sweep.job", 0))):
        m = c.data.metrics
        out.append({"job": c.data.tags.get("sweep.job", ""), "run_id": c.info.run_id, "status": c.info.status,
                    **{k: c.data.params.get(k, "") for k in varying}, "gain": m.get("gain"), "final_loss": m.get("final_loss"),
                    "seconds_per_step": m.get("seconds_per_step")})
    return out


def figures(rows: list[dict]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in rows[0] if k not in {"job", "run_id", "status", "gain", "final_loss", "seconds_per_step"}]
    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others) or f"job {r['job']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.8))
    ax.plot(range(len(rows)), [r["gain"] if r["gain"] is not None else float("nan") for r in rows], "o")
    ax.set_xticks(list(range(len(rows))), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="activation gain, last octave", title="how far each job's ascent went")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return {"gain_per_job.png": fig}
