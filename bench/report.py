"""Turn benchmark results into markdown tables and PNG plots (docs/RESULTS.md and docs/*.png)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from enclip.data.degrade import DEGRADATIONS  # noqa: E402


def fmt(estimate: dict) -> str:
    return f"{estimate['mean']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def headline_table(quality: dict, members: int) -> str:
    keys = ["title2img/R@1", "title2img/R@10", "title2img/MRR@10", "title2img_dup/R@10", "both2img/R@10"]
    names = ["single", f"single-{members}x", "enclip"]
    rows = ["| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        result = quality["systems"][name]
        rows.append(f"| {name} | " + " | ".join(fmt(result[k]) if k in result else "–" for k in keys) + " |")
    return "\n".join(rows)


def attribute_table(quality: dict, members: int) -> str:
    names = ["single", f"single-{members}x", "enclip"]
    attrs = sorted({k.split("/")[1] for k in quality["systems"]["enclip"] if k.startswith("attr2img/")})
    rows = ["| attribute (P@10) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for attr in attrs:
        key = f"attr2img/{attr}/P@10"
        rows.append(f"| {attr} | " + " | ".join(fmt(quality["systems"][n][key]) for n in names) + " |")
    return "\n".join(rows)


def ablation_table(quality: dict) -> str:
    rows = ["| ensemble | fusion | val R@10 | test R@10 |", "|---|---|---|---|"]
    for key, value in sorted(quality["fusion"].items()):
        if not key.endswith("@val"):
            continue
        name, rule = key[: -len("@val")].split("/")
        test = quality["fusion"].get(f"{name}/{rule}@test")
        rows.append(f"| {name} | {rule} | {fmt(value)} | {fmt(test) if test else '–'} |")
    return "\n".join(rows)


def members_table(quality: dict) -> str:
    rows = ["| member of the chosen ensemble | test title2img R@10 |", "|---|---|"]
    rows += [f"| {m} | {fmt(v)} |" for m, v in quality["members"].items()]
    return "\n".join(rows)


def diff_table(quality: dict) -> str:
    rows = ["| comparison (title2img R@10) | difference [95% paired bootstrap] |", "|---|---|"]
    rows += [f"| {k.replace('-', ' − ', 1)} | {fmt(v)} |" for k, v in quality["diffs"].items()]
    return "\n".join(rows)


def data_table(curves: dict) -> str:
    fractions = sorted(next(iter(curves.values())))
    header = "| system | " + " | ".join(f"{f:.0%} of train" for f in fractions) + " |"
    rows = [header, "|---" * (len(fractions) + 1) + "|"]
    for name, points in curves.items():
        rows.append(f"| {name} | " + " | ".join(fmt(points[f]) for f in fractions) + " |")
    return "\n".join(rows)


def plot_data(curves: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        fractions = sorted(points)
        means = [points[f]["mean"] for f in fractions]
        ax.errorbar(fractions, means, yerr=[[m - points[f]["low"] for m, f in zip(means, fractions)],
                                            [points[f]["high"] - m for m, f in zip(means, fractions)]],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("share of the train split")
    ax.set_ylabel("title2img R@10 (test)")
    ax.set_title("Quality against training data size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LQ_TASKS = {"img2img_lq": "Degraded photo → clean catalogue image",
            "both2img": "Degraded photo + its title → clean catalogue image"}


def plot_low_quality(quality: dict, members: int, path: Path, severities, task: str = "img2img_lq") -> None:
    """``task`` R@10 against severity: a panel per degradation, a line per system."""
    names = ["single", f"single-{members}x", "enclip"]
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.5), sharey=True)
    for ax, degradation in zip(axes.flat, DEGRADATIONS):
        for name in names:
            result = quality["systems"][name]
            means = [result[f"{task}/{degradation}/{s}/R@10"]["mean"] for s in severities]
            ax.plot(severities, means, marker="o", label=name)
        ax.set_title(degradation)
        ax.set_xlabel("severity")
    for row in axes:
        row[0].set_ylabel(f"{task} R@10")
    axes[0, 0].legend()
    fig.suptitle(f"{LQ_TASKS[task]}, by degradation and severity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lq_table(quality: dict, members: int, severities, task: str = "img2img_lq") -> str:
    names = ["single", f"single-{members}x", "enclip"]
    rows = ["| degradation | severity | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for degradation in DEGRADATIONS:
        for s in severities:
            key = f"{task}/{degradation}/{s}/R@10"
            if key in quality["systems"]["enclip"]:
                rows.append(f"| {degradation} | {s} | " + " | ".join(fmt(quality["systems"][n][key]) for n in names)
                            + " |")
    return "\n".join(rows)


def has_task_by_severity(quality: dict, task: str) -> bool:
    """Whether the run measured ``task`` per degradation and severity (both2img was pooled-only before)."""
    return any(key.startswith(f"{task}/{DEGRADATIONS[0]}/") for key in quality["systems"]["enclip"])


def diversity_table(quality: dict) -> str:
    rows = ["| ensemble | mean pairwise top-10 overlap | mean pairwise score correlation |", "|---|---|---|"]
    rows += [f"| {name} | {v['top10_overlap']:.2f} | {v['score_correlation']:.3f} |"
             for name, v in quality.get("diversity", {}).items()]
    return "\n".join(rows)


def cluster_table(clusters: list[dict]) -> str:
    """Cluster balance: how much of the data each specialist saw and how well it searches the whole catalogue."""
    total = clusters[0]["train_items"] if clusters else 0
    rows = ["| specialist | cluster size | trained on (share of train) | its validation R@10 in training "
            "(all categories) | main article types |", "|---|---|---|---|---|"]
    for c in clusters:
        recall = "–" if c["val_R@10"] is None else f"{c['val_R@10']:.3f}"
        rows.append(f"| {c['cluster']} | {c['size']:,} | {c['member_items']:,} ({c['member_items'] / total:.0%}) "
                    f"| {recall} | {', '.join(c['article_types'])} |")
    return "\n".join(rows)


def training_table(costs: dict[str, dict], systems: list[str]) -> str:
    """Training wall time per system and per member (mean, and median with min–max when the run saved each
    member's time) for ``systems``."""
    rows = ["| system | members | wall time, min | mean per member, min | per member, min: median (min–max) |",
            "|---|---|---|---|---|"]
    for name in (name for name in systems if name in costs):
        cost, members = costs[name], costs[name]["member_seconds"]
        if cost.get("resumed"):
            rows.append(f"| {name} | {cost['members']} | – (resumed after an interruption: not timed whole) | – | – |")
            continue
        total = "–" if cost["seconds"] is None else f"{cost['seconds'] / 60:.1f}"
        mean = "–" if cost["seconds"] is None else f"{cost['seconds'] / 60 / cost['members']:.1f}"
        spread = "–" if not members or None in members else (
            f"{np.median(members) / 60:.1f} ({min(members) / 60:.1f}–{max(members) / 60:.1f})")
        rows.append(f"| {name} | {cost['members']} | {total} | {mean} | {spread} |")
    return "\n".join(rows)
