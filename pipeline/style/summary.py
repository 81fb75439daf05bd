"""Style transfer's sweep summary (`pipeline.sweep` writes and logs it): one row per job with the
params that vary, its final losses and its SSIM to the photo, and a plot of style loss against SSIM
(how much painting each job bought with how much of the photo)."""
from __future__ import annotations

SCORE = "final_loss"  # lower is better within one recipe; across recipes, read the plot


def rows(children) -> list[dict]:
    from pipeline.sweep import varying_params

    varying = varying_params(children)
    out = []
    for c in sorted(children, key=lambda c: int(c.data.tags.get("sweep.job", 0))):
        m = c.data.metrics
        out.append({"job": c.data.tags.get("sweep.job", ""), "run_id": c.info.run_id, "status": c.info.status,
                    **{k: c.data.params.get(k, "") for k in varying}, "final_loss": m.get("final_loss"),
                    "final_style_loss": m.get("final_style_loss"), "ssim_to_content": m.get("ssim_to_content"),
                    "seconds_per_evaluation": m.get("seconds_per_evaluation")})
    return out


def figures(rows: list[dict]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {"job", "run_id", "status", "final_loss", "final_style_loss", "ssim_to_content", "seconds_per_evaluation"}
    others = [k for k in rows[0] if k not in measured]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        if r["final_style_loss"] is None or r["ssim_to_content"] is None:
            continue
        ax.plot(r["ssim_to_content"], r["final_style_loss"], "o")
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others) or f"job {r['job']}"
        ax.annotate(label, (r["ssim_to_content"], r["final_style_loss"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="SSIM to the photo (more photo)", ylabel="final style loss (less painting)", yscale="log",
           title="what each job traded")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return {"style_vs_ssim.png": fig}
