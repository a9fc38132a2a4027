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
from resp_jax.figures import (MAP_NAMES, embed_2d, map_panels, plot_confusion,  # noqa: E402
                              plot_curves, plot_embedding, plot_recall, umap_module)

FLAGS = flags.FLAGS


FIGURE_DIR = "report"


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
        umap_module()  # fail before the slow part, not after it
    run = finished_run.load(workdir)
    records = read_metrics(workdir)
    data = run_data.load(run.config)
    out = run.split_outputs(data, "test")
    classes = run.classes
    cm = metrics.confusion_matrix(out["label"], out["prediction"], len(classes))
    recomputed = metrics.scores(cm, dataset=run.dataset)  # SPRSound: + its challenge score
    recall, support = np.asarray(recomputed["recall"]), np.asarray(recomputed["support"])

    figures = workdir / FIGURE_DIR
    figures.mkdir(parents=True, exist_ok=True)
    plot_confusion(cm, classes, figures / "confusion.png")
    plot_recall(recall, support, classes, figures / "recall.png", out["split"])
    plot_curves(records, figures / "curves.png",
                (run.results["stage"], run.results["epoch"]), run.results.get("test_score_recent"))
    n = len(out["label"])
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))
    codes = {"label": out["label"][rows], **{k: v[rows] for k, v in out["codes"].items()
                                              if k != "label"}}
    map_note = ""
    if len(rows) >= 5:
        xy = embed_2d(out["features"][rows], embedding, seed=int(run.config.train.seed))
        plot_embedding(xy, codes, run.schema, figures / "embedding.png",
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
              f"From `metrics.jsonl` ({sum('split' in r for r in records)} evaluations, "
              f"{sum('step' in r for r in records)} logging windows); per stage, the loss "
              "and Score per epoch (dashed line: the selected epoch), then every loss term, "
              "the learning rate and the gradient norm per step.", ""]
    recent = res.get("test_score_recent")
    if recent:
        lines += [f"Test Score over epochs {recent['epochs'][0]}-{recent['epochs'][1]} of stage "
                  f"`{res['stage']}`: {recent['mean']:.2f} ± {recent['std']:.2f} (mean ± std, "
                  "the shaded band), against the selected epoch's "
                  f"{res['test']['score']:.2f}: `{res['selection']}` selection on the test "
                  "split reports the top of this swing (README, \"Comparing with the paper\").",
                  ""]
    lines += ["## Embedding map", ""]
    if map_note:
        lines.append(map_note)
    else:
        lines += [f"![embedding map]({FIGURE_DIR}/embedding.png)", "",
                  f"{MAP_NAMES[embedding]} of the frozen encoder features of the "
                  f"{out['split']} split "
                  f"({len(rows)} of {n} cycles), coloured by "
                  + ", ".join(t for _, t in map_panels(run.schema)) + "."]
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
            "metrics": {**{k: (v, None) for k, v in res["test"].items() if k != "loss"},
                        **({metrics.RECENT: (res["test_score_recent"]["mean"], None)}
                           if res.get("test_score_recent") else {})}}


def compare(directories) -> str:
    """A Markdown table of several runs or sweeps (mean ± population std for sweeps)."""
    rows = [compare_row(d) for d in directories]
    keys = [(k, h) for k, h in metrics.TABLE_NAMES.items()
            if any(k in r["metrics"] for r in rows)]

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
