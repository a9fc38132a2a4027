"""The figures of a run's report (matplotlib, Agg backend): confusion matrices, per-class
recall, per-epoch and per-step training curves, a 2-D map of encoder features, and the test
figures per metadata subgroup."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAP_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ------------------------------------------------------------------------------------------
# Figures


def plot_confusion(cm: np.ndarray, classes, path: Path) -> None:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    size = 2.2 + 0.55 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size))
    # The row-normalised matrix is drawn on a fixed 0-1 scale, so its shades read as recall.
    for ax, values, title, fmt, top in ((axes[0], cm, "counts", "d", None),
                                        (axes[1], norm, "row-normalised", ".2f", 1.0)):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ax.set_title(f"Confusion matrix ({title})")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("annotated")
        top = top or (values.max() if values.size else 0)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if top and values[i, j] > 0.6 * top else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recall(recall: np.ndarray, support: np.ndarray, classes, path: Path,
                split: str = "test") -> None:
    """Bars of per-class recall (percent) with each class's number of cycles."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(classes), 3.6))
    bars = ax.bar(range(len(classes)), recall, color="tab:blue")
    for bar, n in zip(bars, support):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"n={n}",
                ha="center", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylim(0, 110)
    ax.set_ylabel("recall (%)")
    ax.set_title(f"Per-class recall, {split} split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STAGES = {"train": "training", "pretrain": "contrastive pretraining",
          "linear": "linear classifier on frozen features"}
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:green", "test": "tab:red"}  # in every panel


def curve_panels(records: list) -> list:
    """(stage, key, {series: [(x, y)]}, x label) of each curve panel, from metrics.jsonl.

    Per-epoch evaluations (lines with a ``split``): the loss of every stage, then the Score of
    every stage that evaluated one, one series per split. Stages get panels of their own
    because their epochs restart at 1 and their losses (SupCon, CE) are on different scales.
    Per-step logging windows (lines with a ``step``): every loss term (``loss``,
    ``loss/<head>``, ``loss/ce``) in one panel per stage, then the learning rate and the
    gradient norm.
    """
    series: dict = {}
    for r in records:
        if "split" in r:
            for key in ("loss", "score"):
                value = r.get(key)
                if isinstance(value, (int, float)) and np.isfinite(value):
                    series.setdefault((r["stage"], key), {}).setdefault(r["split"], []).append(
                        (r["epoch"], value))
        elif "step" in r:
            for key, value in r.items():
                if not (isinstance(value, (int, float)) and np.isfinite(value)):
                    continue
                if key == "loss" or key.startswith("loss/"):
                    panel = "step losses"
                elif key in ("lr", "grad_norm"):
                    panel = key
                else:
                    continue
                series.setdefault((r["stage"], panel), {}).setdefault(key, []).append(
                    (r["step"], value))
    stages = list(dict.fromkeys(r["stage"] for r in records if "stage" in r))
    keys = ("loss", "score", "step losses", "lr", "grad_norm")
    return [(stage, key, series[(stage, key)], "epoch" if key in ("loss", "score") else "step")
            for key in keys for stage in stages if (stage, key) in series]


PANEL_TITLES = {"loss": "Loss", "score": "Score", "step losses": "Loss terms per step",
                "lr": "Learning rate", "grad_norm": "Gradient norm"}


def plot_curves(records: list, path: Path, selected: tuple | None = None,
                recent: dict | None = None) -> None:
    """`curve_panels` in rows of four; ``selected`` (stage, epoch) is marked on its stage's
    per-epoch panels, and ``recent`` (results.json ``test_score_recent``) shaded on its Score
    panel over the epochs it covers."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    panels = curve_panels(records)
    cols = min(4, max(1, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(0.5 + 4.6 * cols, 4 * rows), squeeze=False)
    for ax, (stage, key, by_series, xlabel) in zip(axes.ravel(), panels):
        for name, points in sorted(by_series.items()):
            x, y = zip(*points)
            label = f"{name} split" if xlabel == "epoch" else name
            ax.plot(x, y, marker="." if len(x) < 50 else None, label=label,
                    color=SPLIT_COLOURS.get(name) if xlabel == "epoch" else None)
        if selected is not None and selected[0] == stage and xlabel == "epoch":
            ax.axvline(selected[1], color="grey", linestyle="--", linewidth=1,
                       label=f"selected epoch ({selected[1]})")
        if recent and selected is not None and selected[0] == stage and key == "score":
            lo, hi = recent["mean"] - recent["std"], recent["mean"] + recent["std"]
            ax.fill_between(recent["epochs"], [lo, lo], [hi, hi], color="tab:red", alpha=0.15,
                            label=f"test, last epochs: {recent['mean']:.2f} ± {recent['std']:.2f}")
        ax.set_title(f"{PANEL_TITLES[key]}: {STAGES.get(stage, stage)}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Score (%)" if key == "score" else PANEL_TITLES[key].lower())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0][0].text(0.5, 0.5, "metrics.jsonl holds no loss or Score", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def umap_module():
    try:
        import umap
    except ImportError:
        raise ValueError("--embedding=umap needs umap-learn (pip install umap-learn); "
                         "or use --embedding=tsne") from None
    return umap


def embed_2d(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """[n, 2] t-SNE (scikit-learn) or UMAP (umap-learn) coordinates of standardised features."""
    x = np.asarray(features, np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    if method == "umap":
        return umap_module().UMAP(n_components=2, random_state=seed,
                            n_neighbors=min(15, len(x) - 1)).fit_transform(x)
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def map_panels(dataset) -> list:
    """(field, title) of each colouring of the embedding map: class, then up to three
    metadata fields of the dataset (a name or a `metadata.Schema`), sex, age group and
    device first (chest location when there is no device), then any other."""
    from resp_jax.data import metadata
    fields = metadata.dataset_fields(dataset)[1:]
    titles = {"sex": "sex", "age_group": "age group", "device": "device"}
    chosen = [f for f in ("sex", "age_group", "device") if f in fields]
    if "device" not in fields and "location" in fields:
        chosen.append("location")
        titles["location"] = "chest location (no device in this dataset)"
    chosen += [f for f in fields if f not in chosen]
    return [("label", "class")] + [(f, titles.get(f, f)) for f in chosen[:3]]


def plot_embedding(xy: np.ndarray, codes: dict, dataset, path: Path, title: str) -> None:
    from resp_jax.data import metadata
    plt = _pyplot()
    panels = map_panels(dataset)
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10")
    for ax, (field, name) in zip(axes.ravel(), panels):
        values = codes[field]
        names = metadata.vocab(dataset, field)
        unknown = values < 0
        if unknown.any():
            ax.scatter(xy[unknown, 0], xy[unknown, 1], s=8, c="lightgrey", label="unknown")
        for k, value in enumerate(names):
            hit = values == k
            if hit.any():
                ax.scatter(xy[hit, 0], xy[hit, 1], s=8, color=cmap(k % 10),
                           label=f"{value} ({hit.sum()})")
        ax.set_title(f"by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SUBGROUP_METRICS = (("sp", "Sp", "tab:blue"), ("se", "Se", "tab:orange"),
                    ("score", "Score", "black"))


def _columns(groups: list, columns: int) -> list:
    """Fields dealt to ``columns`` columns, largest first, each to the shortest column."""
    out = [[] for _ in range(columns)]
    for field, rows in sorted(groups, key=lambda g: -len(g[1])):
        min(out, key=lambda c: sum(len(r) + 2 for _, r in c)).append((field, rows))
    return [c for c in out if c]


def plot_subgroups(rows: list, overall: float, path: Path) -> None:
    """Sp, Se and Score with their 95 % intervals per value of each metadata field
    (`evaluation.subgroups` rows), one panel per field, values labelled with their cycle and
    patient counts; the dashed line is the overall Score."""
    plt = _pyplot()
    groups = {}
    for r in rows:
        groups.setdefault(r["field"], []).append(r)
    groups = list(groups.items())
    cols = _columns(groups, 2 if len(groups) > 3 else 1)
    height = max(sum(len(r) + 2 for _, r in c) for c in cols)
    fig = plt.figure(figsize=(8 * len(cols), 1.5 + 0.34 * height), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(1, len(cols), wspace=0.04))
    for sub, col in zip(subfigs, cols):
        axes = np.atleast_1d(sub.subplots(len(col), 1, sharex=True, gridspec_kw={
            "height_ratios": [len(r) + 1 for _, r in col]}))
        for ax, (field, group) in zip(axes, col):
            y = np.arange(len(group))[::-1]
            for offset, (key, name, colour) in zip((0.25, 0.0, -0.25), SUBGROUP_METRICS):
                value = np.array([r[key]["value"] for r in group], np.float64)
                ci = np.array([r[key]["interval"] or [np.nan, np.nan] for r in group])
                err = np.nan_to_num(np.abs(ci.T - value))  # n/a or no interval: no bar
                ax.errorbar(value, y + offset, xerr=err, fmt="o", color=colour, markersize=4,
                            capsize=2, linewidth=1, label=name)
            ax.axvline(overall, color="grey", linestyle="--", linewidth=1)
            ax.set_yticks(y, [f"{r['value'] or 'unknown'}  ({r['cycles']} cycles, "
                              f"{r['patients']} pat.)" for r in group], fontsize=8)
            ax.set_ylim(-0.6, len(group) - 0.4)
            ax.set_xlim(-1, 101)  # a marker at 0 or 100 shows whole
            ax.set_title(field, fontsize=10, loc="left")
            ax.grid(axis="x", alpha=0.3)
        axes[-1].set_xlabel("percent, with 95 % patient-bootstrap interval")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper right", ncol=3, fontsize=9)
    fig.suptitle(f"Test figures per subgroup (dashed: overall Score {overall:.2f})", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
