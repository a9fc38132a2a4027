"""Command line: a Markdown report with figures for a run, or a table comparing runs.

    python -m resp_jax.report --workdir=DIR [--embedding=tsne|umap] [--max_points=3000]
    python -m resp_jax.report --compare DIR1 DIR2 ... [--out=FILE.md]

The first writes ``DIR/report.md`` and its figures in ``DIR/report/``: the confusion matrix of
the selected model on the test split (counts and row-normalised), per-class recall, the
training / validation curves of ``metrics.jsonl``, and a 2-D map (t-SNE, or UMAP when
umap-learn is installed) of the frozen encoder features of the test split coloured by class,
sex, age group and device (SPRSound has no device: chest location instead). The metrics are
recomputed from ``ckpt/best`` and shown beside those of ``results.json``.

``--compare`` puts runs (a directory with results.json) and sweeps (summary.json, from
resp_jax.sweep) side by side in one table, printed and optionally written to ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from resp_jax import metrics  # noqa: E402

FLAGS = flags.FLAGS


FIGURE_DIR = "report"
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


def read_metrics(workdir: Path) -> list:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a resp_jax run directory")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    return out


STAGES = {"train": "training", "pretrain": "contrastive pretraining",
          "linear": "linear classifier on frozen features"}
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:green", "test": "tab:red"}  # in every panel


def curve_panels(records: list) -> list:
    """(stage, key, {split: [(epoch, value)]}) of each curve panel: the loss of every stage,
    then the Score of every stage that evaluated one. Stages get panels of their own because
    their epochs restart at 1 and their losses (SupCon, CE) are on different scales."""
    series: dict = {}
    for r in records:
        for key in ("loss", "score"):
            value = r.get(key)
            if isinstance(value, (int, float)) and np.isfinite(value):
                series.setdefault((r["stage"], key), {}).setdefault(r["split"], []).append(
                    (r["epoch"], value))
    stages = list(dict.fromkeys(r["stage"] for r in records))
    return [(stage, key, series[(stage, key)]) for key in ("loss", "score") for stage in stages
            if (stage, key) in series]


def plot_curves(records: list, path: Path, selected: tuple | None = None) -> None:
    """`curve_panels` side by side; ``selected`` (stage, epoch) is marked on its stage."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    panels = curve_panels(records)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(0.5 + 4.6 * max(1, len(panels)),
                                                               4), squeeze=False)
    for ax, (stage, key, by_split) in zip(axes[0], panels):
        for split, points in sorted(by_split.items()):
            x, y = zip(*points)
            ax.plot(x, y, marker="." if len(x) < 50 else None, label=f"{split} split",
                    color=SPLIT_COLOURS.get(split))
        if selected is not None and selected[0] == stage:
            ax.axvline(selected[1], color="grey", linestyle="--", linewidth=1,
                       label=f"selected epoch ({selected[1]})")
        ax.set_title(f"{'Loss' if key == 'loss' else 'Score'}: {STAGES.get(stage, stage)}",
                     fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if key == "loss" else "Score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not panels:
        axes[0][0].text(0.5, 0.5, "metrics.jsonl holds no loss or Score", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _umap():
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
        return _umap().UMAP(n_components=2, random_state=seed,
                            n_neighbors=min(15, len(x) - 1)).fit_transform(x)
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def map_panels(dataset: str) -> list:
    """(field, title) of each colouring of the embedding map."""
    from resp_jax.data import metadata
    last = ("device", "device") if "device" in metadata.dataset_fields(dataset) else \
        ("location", "chest location (no device in this dataset)")
    return [("label", "class"), ("sex", "sex"), ("age_group", "age group"), last]


def plot_embedding(xy: np.ndarray, codes: dict, dataset: str, path: Path, title: str) -> None:
    from resp_jax.data import metadata
    plt = _pyplot()
    panels = map_panels(dataset)
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
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


# ------------------------------------------------------------------------------------------
# Tables


def _cell(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _md_table(header: list, rows: list) -> list:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(workdir, *, embedding: str = "tsne", max_points: int = 3000) -> Path:
    """Writes ``workdir/report.md`` and ``workdir/report/*.png``; returns the .md path."""
    from resp_jax import cli, finished_run
    from resp_jax.data import run_data

    workdir = Path(workdir)
    if embedding == "umap":
        _umap()  # fail before the slow part, not after it
    run = finished_run.load(workdir)
    records = read_metrics(workdir)
    data = run_data.load(run.config)
    out = run.split_outputs(data, "test")
    classes = run.classes
    cm = metrics.confusion_matrix(out["label"], out["prediction"], len(classes))
    recomputed = metrics.scores(cm, dataset=run.dataset)
    recall, support = np.asarray(recomputed["recall"]), np.asarray(recomputed["support"])

    figures = workdir / FIGURE_DIR
    figures.mkdir(parents=True, exist_ok=True)
    plot_confusion(cm, classes, figures / "confusion.png")
    plot_recall(recall, support, classes, figures / "recall.png", out["split"])
    plot_curves(records, figures / "curves.png",
                (run.results["stage"], run.results["epoch"]))
    n = len(out["label"])
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))
    codes = {"label": out["label"][rows], **{k: v[rows] for k, v in out["codes"].items()
                                              if k != "label"}}
    map_note = ""
    if len(rows) >= 5:
        xy = embed_2d(out["features"][rows], embedding, seed=int(run.config.train.seed))
        plot_embedding(xy, codes, run.dataset, figures / "embedding.png",
                       f"{MAP_NAMES[embedding]} of frozen encoder features, {out['split']} split "
                       f"({len(rows)} of {n} cycles)")
    else:
        map_note = f"Too few test cycles ({n}) for a 2-D map."

    res = run.results
    label = cli.method_label(run.config)
    keys = [(k, h) for k, h in metrics.NAMES.items() if k in res["test"]]
    lines = [f"# {label} on {res['dataset']} ({res['test_split']})", "",
             f"Run `{workdir}`: seed {res['seed']}, model selection `{res['selection']}`, "
             f"selected epoch {res['epoch']} of stage `{res['stage']}`; "
             "cycles: " + ", ".join(f"{k} {v}" for k, v in res["cycles"].items())
             + f"; {res['skipped']} item(s) skipped while reading the data.", "",
             "## Test metrics (%)", ""]
    lines += _md_table(["source"] + [h for _, h in keys],
                       [["results.json"] + [_cell(res["test"][k]) for k, _ in keys],
                        ["recomputed from ckpt/best"] + [_cell(recomputed[k]) for k, _ in keys]])
    lines += ["", f"## Confusion matrix ({out['split']} split, selected model)", "",
              f"![confusion matrix]({FIGURE_DIR}/confusion.png)", "",
              "Rows: annotated class; columns: predicted class.", ""]
    lines += _md_table(["annotated \\ predicted"] + list(classes),
                       [[c] + [int(v) for v in cm[i]] for i, c in enumerate(classes)])
    lines += ["", "## Per-class recall", "", f"![per-class recall]({FIGURE_DIR}/recall.png)", ""]
    lines += _md_table(["class", "cycles", "recall (%)"],
                       [[c, int(support[i]), _cell(recall[i])]
                        for i, c in enumerate(classes)])
    lines += ["", "## Training and validation curves", "",
              f"![curves]({FIGURE_DIR}/curves.png)", "",
              f"From `metrics.jsonl` ({len(records)} evaluations); one panel per stage, the "
              "dashed line at the selected epoch.", "",
              "## Embedding map", ""]
    if map_note:
        lines.append(map_note)
    else:
        lines += [f"![embedding map]({FIGURE_DIR}/embedding.png)", "",
                  f"{MAP_NAMES[embedding]} of the frozen encoder features of the "
                  f"{out['split']} split "
                  f"({len(rows)} of {n} cycles), coloured by "
                  + ", ".join(t for _, t in map_panels(run.dataset)) + "."]
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def heads_cell(config: dict) -> str:
    """The contrastive heads with their weights ('label 0.5, device 0.25'); '–' for CE. The
    method label names the fields only, so runs that differ in weights need this column."""
    if config.get("method") == "ce":
        return "–"
    return ", ".join(f"{field} {float(weight):g}" for field, weight in config["loss"]["heads"])


def compare_row(directory) -> dict:
    """One row of the comparison: a sweep (summary.json) or a single run (results.json)."""
    from ml_collections import ConfigDict

    from resp_jax import cli, finished_run

    directory = Path(directory)
    if (directory / "summary.json").is_file():
        s = finished_run.read_json(directory / "summary.json", "the sweep summary")
        first = directory / "seed_0" / finished_run.CONFIG_FILE  # every seed shares the heads
        heads = heads_cell(finished_run.read_json(first, "its config")) if first.is_file() else ""
        return {"dir": str(directory), "method": s["method"], "heads": heads,
                "dataset": s["dataset"], "test_split": s["test_split"],
                "selection": s["selection"], "runs": s["runs"],
                "metrics": {k: (v["mean"], v["std"]) for k, v in s["metrics"].items()}}
    res = finished_run.read_json(directory / "results.json", "results.json or a sweep's summary.json")
    config = finished_run.read_json(directory / "config.json", "its config")
    return {"dir": str(directory), "method": cli.method_label(ConfigDict(config)),
            "heads": heads_cell(config), "dataset": res["dataset"],
            "test_split": res["test_split"], "selection": res["selection"], "runs": 1,
            "metrics": {k: (v, None) for k, v in res["test"].items() if k != "loss"}}


def compare(directories) -> str:
    """A Markdown table of several runs or sweeps (mean ± population std for sweeps)."""
    rows = [compare_row(d) for d in directories]
    keys = [(k, h) for k, h in metrics.NAMES.items() if any(k in r["metrics"] for r in rows)]

    def cell(r, k):
        if k not in r["metrics"]:
            return "–"
        mean, std = r["metrics"][k]
        return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"

    table = _md_table(["run", "method", "heads (weight)", "dataset (test split)", "selection",
                       "runs"] + [h for _, h in keys],
                      [[f"`{r['dir']}`", r["method"], r["heads"],
                        f"{r['dataset']} ({r['test_split']})", r["selection"], r["runs"]]
                       + [cell(r, k) for k, _ in keys]
                       for r in rows])
    return "\n".join(table) + "\n"


def main(argv):
    compare_dirs = list(FLAGS.compare or []) + list(argv[1:])
    if FLAGS.compare is None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if (FLAGS.workdir is None) == (not compare_dirs):
        raise app.UsageError("give either --workdir=DIR (a report on one run) or "
                             "--compare DIR1 DIR2 ... (a table of runs or sweeps)")
    try:
        if compare_dirs:
            table = compare(compare_dirs)
            print(table, end="", flush=True)
            if FLAGS.out:
                Path(FLAGS.out).write_text(table)
                logging.info("wrote %s", FLAGS.out)
        else:
            path = report(FLAGS.workdir, embedding=FLAGS.embedding,
                          max_points=FLAGS.max_points)
            print(f"wrote {path} and its figures in {path.parent / FIGURE_DIR}/", flush=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so the modules import together)."""
    flags.DEFINE_string("workdir", None, "A finished run to report on.")
    flags.DEFINE_list("compare", None, "Runs or sweeps to tabulate side by side "
                      "(comma separated, or space separated after --compare).")
    flags.DEFINE_string("out", None, "With --compare: also write the table to this file.")
    flags.DEFINE_enum("embedding", "tsne", ["tsne", "umap"], "2-D map method.")
    flags.DEFINE_integer("max_points", 3000, "Most test cycles drawn in the map "
                         "(a seeded random subset beyond that).", lower_bound=10)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
