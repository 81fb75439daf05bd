"""The GAN's sweep summary (`pipeline.sweep` writes and logs it): one row per job with the params
that vary and its KID (with the floor and ceiling, which do not depend on the job's params but on
the evaluation network), and a plot of KID per job."""
from __future__ import annotations

SCORE = "kid"  # the sweep's best job: the lowest KID


def rows(children) -> list[dict]:
    from pipeline.sweep import varying_params

    varying = varying_params(children)
    out = []
    for c in sorted(children, key=lambda c: int(c.data.tags.get("sweep.job", 0))):
        m = c.data.metrics
        kid = next((k for k in m if k.startswith("kid_") and not k.endswith(("_floor", "_ceiling"))), None)
        row = {"job": c.data.tags.get("sweep.job", ""), "run_id": c.info.run_id, "status": c.info.status,
               **{k: c.data.params.get(k, "") for k in varying}, "train": c.data.tags.get("stage.train", ""),
               "kid": m.get(kid) if kid else None, "kid_floor": m.get(f"{kid}_floor") if kid else None,
               "kid_ceiling": m.get(f"{kid}_ceiling") if kid else None, "memorisation_ratio": m.get("memorisation_ratio"),
               "best_step": m.get("best_step")}
        out.append(row)
    return out


def figures(rows: list[dict]) -> dict:
    """KID of every job, labelled by what it varies, with the real frogs' floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = {"job", "run_id", "status", "train", "kid", "kid_floor", "kid_ceiling", "memorisation_ratio", "best_step"}
    others = [k for k in rows[0] if k not in fixed]
    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others) or f"job {r['job']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.8))
    xs = range(len(rows))
    ax.plot(xs, [r["kid"] if r["kid"] is not None else float("nan") for r in rows], "o", label="KID")
    floors = [r["kid_floor"] for r in rows if r["kid_floor"] is not None]
    if floors:
        ax.axhline(floors[0], color="grey", linestyle="--", label="floor (real vs real)")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="KID (lower is better)", title="KID per job")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return {"kid_per_job.png": fig}
