"""Pictures of a search: metric vs NFE (search vs presets) and the chosen schedule's decisions."""
from __future__ import annotations

import numpy as np

from ..files import atomic_write
from ..noise_schedules import NoiseSchedule
from ..schedule import Schedule

__all__ = ["plot_metric_vs_nfe", "plot_schedule"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_metric_vs_nfe(results: dict, path: str, metric_name: str = "metric") -> None:
    """results: nfe → SearchResult. Searched best vs best preset (and each preset family's best)."""
    plt = _plt()
    nfes = sorted(results)
    if len(nfes) == 1:
        return _plot_one_nfe(results[nfes[0]], path, metric_name)
    fig, ax = plt.subplots(figsize=(8, 4))
    families: dict = {}
    for n in nfes:
        for label, v in results[n].table:
            if label.startswith("searched"):
                continue
            fam = label.split(" [")[0]
            families.setdefault(fam, {})[n] = min(v, families.get(fam, {}).get(n, np.inf))
    for fam, vals in sorted(families.items()):
        xs = [n for n in nfes if n in vals]
        ax.plot(xs, [vals[n] for n in xs], "o-", lw=1, ms=3, alpha=0.5, label=fam)
    ax.plot(nfes, [_choice_value(results[n]) for n in nfes], "s-", color="black", lw=2.5, ms=7, label="S3 search")
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"{metric_name} (held-out choice set, lower is better)")
    ax.set_yscale("log")
    ax.set_xticks(nfes)
    ax.grid(alpha=0.3)
    # beside the axes, so no entry hides a point
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)


def _choice_value(result) -> float:
    """The result's metric on the choice set, where the table's presets were measured (its
    `best_metric` is on the report set)."""
    return dict(result.table).get(result.best_label, result.best_metric)


def _plot_one_nfe(result, path: str, metric_name: str) -> None:
    """One NFE: a bar per method (the search's winner and each preset family's best), best on top."""
    plt = _plt()
    best: dict = {}
    for label, v in result.table:
        if not label.startswith("searched"):
            fam = label.split(" [")[0]
            best[fam] = min(v, best.get(fam, np.inf))
    rows = sorted([("S3 search", _choice_value(result))] + list(best.items()), key=lambda p: p[1], reverse=True)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [v for _, v in rows], color=["black" if n == "S3 search" else "tab:blue" for n, _ in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([n for n, _ in rows], fontsize=7)
    ax.set_xlabel(f"{metric_name} (held-out choice set, lower is better)")
    ax.set_xscale("log")
    ax.set_title(f"NFE {result.nfe}: the search and each preset's best spacing", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)


def plot_schedule(schedule: Schedule, ns: NoiseSchedule, path: str) -> None:
    """Per step: where it goes in λ, its order, prediction type and corrector."""
    plt = _plt()
    lam = np.asarray(ns.marginal_lambda(np.asarray(schedule.timesteps)))
    n = len(schedule.steps)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    ax1.plot(range(n + 1), lam, "o-", color="tab:blue")
    ax1.set_ylabel("λ = log α − log σ")
    ax1.set_title(f"{schedule.name or 'schedule'}: NFE {schedule.nfe}" + (", AFS" if schedule.afs else ""), fontsize=9)
    ax1.grid(alpha=0.3)
    for i, st in enumerate(schedule.steps, 1):
        color = "tab:orange" if st.prediction == "data" else "tab:green"
        ax2.bar(i, st.order, color=color, edgecolor="black" if st.corrector != "none" else color, lw=2)
        txt = st.relax if st.relax != "linear" else f"c={st.relax_coef:+.2f}"
        ax2.text(i, st.order + 0.1, txt, ha="center", fontsize=6)
    ax2.set_ylabel("order")
    ax2.set_xlabel("step (orange: data prediction, green: noise; black edge: pseudo-corrector)")
    ax2.set_ylim(0, 5)
    ax2.set_xticks(range(0, n + 1))
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130))
    plt.close(fig)
