"""Command line: a Markdown report with figures for a run, or a comparison of runs.

    python -m resp_jax.report --workdir=DIR [--embedding=tsne|umap] [--max_points=3000]
    python -m resp_jax.report --compare DIR1 DIR2 ... [--out=FILE.md] [--resamples=N]

The first writes ``DIR/report.md`` and its figures in ``DIR/report/``: the test metrics with
their 95 % patient-bootstrap intervals, the confusion matrix of the selected model on the test
split (counts and row-normalised), per-class recall, Sp / Se / Score per value of every
metadata field (table and figure), the training / validation curves of ``metrics.jsonl``, and
a 2-D map (t-SNE, or UMAP when umap-learn is installed) of the frozen encoder features of the
test split coloured by class, sex, age group and device (SPRSound has no device: chest
location instead). Everything but the map and the curves is computed from the run's
``predictions.csv`` (`resp_jax.evaluation`); the metrics are also recomputed from ``ckpt/best``
(the map needs its features anyway) and shown beside those of ``results.json``. A folder
that ``resp_jax.evaluate`` wrote (a run on another dataset) gets the same from its
``predictions.csv``, less the curves and the map (the run's own report has them).

``--compare`` puts runs (a directory with results.json) and sweeps (summary.json, from
resp_jax.sweep) side by side in one table, printed and optionally written to ``--out``; for
two runs it adds their paired difference, for two sweeps Welch's test (`resp_jax.comparison`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from resp_jax import evaluation, metrics  # noqa: E402
from resp_jax.cli import interval_text, md_table  # noqa: E402
from resp_jax.figures import (MAP_NAMES, embed_2d, map_panels, plot_confusion,  # noqa: E402
                              plot_curves, plot_embedding, plot_recall, plot_subgroups,
                              umap_module)

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


def _rate(value) -> str:
    """A subgroup's figure: 'n/a' when it has no cycle to count (NaN)."""
    return "n/a" if value is None or np.isnan(value) else f"{value:.2f}"


def metrics_section(res: dict, keys: list, predictions, recomputed: dict, resamples: int) -> list:
    """The test metrics from every source, and their patient-bootstrap intervals."""
    rows = [["results.json"] + [_cell(res["test"][k]) for k, _ in keys]]
    lines = []
    if predictions is not None:
        from_file = predictions.scores()
        rows.append([evaluation.PREDICTIONS_FILE] + [_cell(from_file[k]) for k, _ in keys])
    if recomputed is not None:   # None: an evaluation on another dataset (no ckpt/best)
        rows.append(["recomputed from ckpt/best"] + [_cell(recomputed[k]) for k, _ in keys])
    if predictions is not None:
        ci = evaluation.bootstrap(predictions, resamples)
        rows.append(["95 % interval"] + [interval_text(ci.get(k)) for k, _ in keys])
        patients = len(np.unique(predictions.patient))
        lines = ["", f"95 % interval: the 2.5th and 97.5th percentiles over {resamples} "
                 f"resamples of the {patients} test patients (with replacement, every cycle of "
                 "a drawn patient in; docs/method.md §11). It covers the sampling of test "
                 "patients for this trained model, not seed-to-seed variation (a sweep's)."]
    else:
        lines = ["", f"No `{evaluation.PREDICTIONS_FILE}` in this run (written by runs since "
                 "per-cycle predictions exist): no intervals, no subgroups."]
    return md_table(["source"] + [h for _, h in keys], rows) + lines


SUBGROUP_VALUES = 12  # a field with more values in the test split (a manifest's age) is left out


def subgroup_section(predictions, schema, resamples: int, figure: Path) -> list:
    """Sp / Se / Score per value of each metadata field: a table and ``figure``."""
    if predictions is None or not predictions.fields:
        return []
    counts = {f: len(set(v.tolist())) for f, v in predictions.fields.items()}
    many = [f"{f} ({n} values)" for f, n in counts.items() if n > SUBGROUP_VALUES]
    shown = dataclasses.replace(predictions, fields={
        f: v for f, v in predictions.fields.items() if counts[f] <= SUBGROUP_VALUES})
    if not shown.fields:
        return ["## Subgroups", "", f"Every metadata field has more than {SUBGROUP_VALUES} "
                f"values in the test split: {', '.join(many)}.", ""]
    rows = evaluation.subgroups(shown, resamples, order=dict(schema.vocabs))
    overall = predictions.scores()["score"]
    plot_subgroups(rows, overall, figure)
    lines = ["## Subgroups", "", f"![subgroups]({FIGURE_DIR}/{figure.name})", "",
             "Test figures per value of each metadata field (unknown: no value recorded), with "
             "their 95 % intervals from resampling the subgroup's patients "
             f"({resamples} resamples); n/a: the subgroup has no normal (Sp) or no abnormal "
             f"(Se) cycle. Dashed line in the figure: the overall Score ({overall:.2f}). A "
             "subgroup of few patients has a wide interval: read differences between subgroups "
             "against them."
             + (f" Left out, with more than {SUBGROUP_VALUES} values: {', '.join(many)}."
                if many else ""), ""]
    lines += md_table(
        ["field", "value", "cycles", "patients", "Sp", "Se", "Score"],
        [[r["field"], r["value"] or "unknown", r["cycles"], r["patients"]]
         + [f"{_rate(r[k]['value'])} {interval_text(r[k]['interval'])}"
            if r[k]["interval"] else _rate(r[k]["value"]) for k in ("sp", "se", "score")]
         for r in rows])
    return lines + [""]


def evaluation_report(workdir: Path, resamples: int | None = None) -> Path:
    """``report.md`` of a run evaluated on another dataset (`resp_jax.evaluate`): the
    metrics, confusion matrix, recall and subgroups of its ``predictions.csv``; the curves
    and the map are the run's own (its report)."""
    from ml_collections import ConfigDict

    from resp_jax import cli, finished_run
    from resp_jax.data import metadata

    res = finished_run.read_json(workdir / finished_run.RESULTS_FILE, "its results")
    config = ConfigDict(finished_run.read_json(workdir / finished_run.CONFIG_FILE, "its config"))
    ev = res["evaluation"]
    predictions = evaluation.read(workdir / evaluation.PREDICTIONS_FILE, res["dataset"])
    resamples = resamples or res["bootstrap"]["resamples"]
    shown = predictions.scores()
    classes = predictions.classes
    figures = workdir / FIGURE_DIR
    figures.mkdir(parents=True, exist_ok=True)
    plot_confusion(np.asarray(shown["confusion_matrix"]), classes, figures / "confusion.png")
    plot_recall(np.asarray(shown["recall"]), np.asarray(shown["support"]), classes,
                figures / "recall.png", res["test_split"])
    keys = [(k, h) for k, h in metrics.NAMES.items() if k in res["test"]]
    side = ("each cycle's annotated class mapped onto the run's classes"
            if ev["mapped"] == "annotations" else
            "the run's probabilities summed onto the dataset's classes")
    lines = [f"# {cli.method_label(config)} trained on {ev['run_dataset']}, evaluated on "
             f"{res['dataset']} ({res['test_split']})", "",
             f"The run `{ev['run']}` (seed {res['seed']}, selected epoch {res['epoch']}) on "
             f"{len(predictions)} cycles, scored in the classes {list(classes)}: {side} "
             f"(map {ev['map_from']}: " + ", ".join(f"{a} → {b or 'left out'}"
                                                   for a, b in ev["map"].items()) + ")"
             + (f"; left out: {ev['left_out']}" if ev["left_out"] else "") + ". The "
             "curves and the embedding map are the run's (its own report).", "",
             "## Test metrics (%)", ""]
    lines += metrics_section(res, keys, predictions, None, resamples)
    lines += ["", f"## Confusion matrix ({res['test_split']})", "",
              f"![confusion matrix]({FIGURE_DIR}/confusion.png)", ""]
    cm = np.asarray(shown["confusion_matrix"])
    lines += md_table(["annotated \\ predicted"] + list(classes),
                      [[c] + [int(v) for v in cm[i]] for i, c in enumerate(classes)])
    lines += ["", "## Per-class recall", "", f"![per-class recall]({FIGURE_DIR}/recall.png)", ""]
    lines += md_table(["class", "cycles", "recall (%)"],
                      [[c, int(shown["support"][i]), _cell(shown["recall"][i])]
                       for i, c in enumerate(classes)])
    schema = metadata.Schema(res["dataset"], classes, ())
    lines += [""] + subgroup_section(predictions, schema, resamples, figures / "subgroups.png")
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def report(workdir, *, embedding: str = "tsne", max_points: int = 3000,
           resamples: int | None = None) -> Path:
    """Writes ``workdir/report.md`` and ``workdir/report/*.png``; returns the .md path.
    ``resamples``: of every bootstrap (default: the run's ``eval.bootstrap_resamples``).
    A run evaluated on another dataset gets `evaluation_report`."""
    from resp_jax import cli, finished_run
    from resp_jax.data import run_data

    workdir = Path(workdir)
    results = workdir / finished_run.RESULTS_FILE
    if results.is_file() and "evaluation" in finished_run.read_json(results, "its results"):
        return evaluation_report(workdir, resamples)
    if embedding == "umap":
        umap_module()  # fail before the slow part, not after it
    run = finished_run.load(workdir)
    records = read_metrics(workdir)
    data = run_data.load(run.config)
    out = run.split_outputs(data, "test")
    classes = run.classes
    if resamples is None:
        resamples = int(run.config.eval.get("bootstrap_resamples", evaluation.RESAMPLES))
    recomputed = metrics.summarize(out["label"], out["prediction"], dataset=run.dataset,
                                   num_classes=len(classes))  # SPRSound: + its challenge score
    path = workdir / evaluation.PREDICTIONS_FILE
    predictions = evaluation.read(path, run.dataset) if path.is_file() else None
    shown = predictions.scores() if predictions is not None else recomputed
    cm = np.asarray(shown["confusion_matrix"])
    recall, support = np.asarray(shown["recall"]), np.asarray(shown["support"])

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
    source = f"`{evaluation.PREDICTIONS_FILE}`" if predictions is not None else "`ckpt/best`"
    lines = [f"# {label} on {res['dataset']} ({res['test_split']})", "",
             f"Run `{workdir}`: seed {res['seed']}, model selection `{res['selection']}`, "
             f"selected epoch {res['epoch']} of stage `{res['stage']}`; "
             "cycles: " + ", ".join(f"{k} {v}" for k, v in res["cycles"].items())
             + f"; {res['skipped']} item(s) skipped while reading the data.", "",
             "## Test metrics (%)", ""]
    lines += metrics_section(res, keys, predictions, recomputed, resamples)
    lines += ["", f"## Confusion matrix ({out['split']} split, selected model)", "",
              f"![confusion matrix]({FIGURE_DIR}/confusion.png)", "",
              f"Rows: annotated class; columns: predicted class (from {source}).", ""]
    lines += md_table(["annotated \\ predicted"] + list(classes),
                      [[c] + [int(v) for v in cm[i]] for i, c in enumerate(classes)])
    lines += ["", "## Per-class recall", "", f"![per-class recall]({FIGURE_DIR}/recall.png)", ""]
    lines += md_table(["class", "cycles", "recall (%)"],
                      [[c, int(support[i]), _cell(recall[i])]
                       for i, c in enumerate(classes)])
    lines += [""] + subgroup_section(predictions, run.schema, resamples,
                                     figures / "subgroups.png")
    lines += ["## Training and validation curves", "",
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


def main(argv):
    compare_dirs = list(FLAGS.compare or []) + list(argv[1:])
    if FLAGS.compare is None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if (FLAGS.workdir is None) == (not compare_dirs):
        raise app.UsageError("give either --workdir=DIR (a report on one run) or "
                             "--compare DIR1 DIR2 ... (a table of runs or sweeps)")
    try:
        if compare_dirs:
            from resp_jax import comparison
            text = comparison.table(compare_dirs)
            print(text, end="", flush=True)  # first: the table stands when pairing is refused
            if len(compare_dirs) == 2:
                test = comparison.difference(*compare_dirs, resamples=FLAGS.resamples)
                print("\n" + test, end="", flush=True)
                text += "\n" + test
            if FLAGS.out:
                Path(FLAGS.out).write_text(text)
                logging.info("wrote %s", FLAGS.out)
        else:
            path = report(FLAGS.workdir, embedding=FLAGS.embedding,
                          max_points=FLAGS.max_points, resamples=FLAGS.resamples)
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
    flags.DEFINE_integer("resamples", None, "Patient-bootstrap resamples of every interval "
                         "(default: the run's eval.bootstrap_resamples, 2000).", lower_bound=1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
