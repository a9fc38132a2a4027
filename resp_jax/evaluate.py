"""Command line: a finished run evaluated on another dataset, through a class map.

    python -m resp_jax.evaluate --workdir=RUN --dataset=sprsound [--data_dir=ROOT]
        [--split=inter_test] [--mapping=FILE.json|'Rhonchi=wheeze,...'] [--out=DIR]

Classifies every cycle of a split of another dataset (default: the split that dataset
reports, e.g. SPRSound's inter-patient test set; no ``--data_dir``: its synthetic default)
with the run's selected model, preprocessed exactly as the run's evaluation did: the target
dataset is prepared by the same code (decoded, resampled to the prepared rate, cut and faded)
and turned into the run's features (front end, clip length, padding) in evaluation batches
standardised with the run's own constants (`finished_run.TrainedRun.inference_config`).

The annotated and predicted classes meet in one set of classes through a class map
(docs/method.md §13.2): one dataset's classes onto the other's, the finer onto the coarser.
When the run's classes are the finer (a SPRSound model on ICBHI), its probabilities are
summed per class of the dataset and the prediction is their arg max; when the dataset's are
the finer (an ICBHI model on SPRSound), each cycle's annotated class is mapped onto the run's
classes (a class mapped to '' is left out, and counted). Without ``--mapping`` the map is the
one a dataset declares (`sources.declared_maps`: SPRSound's events onto ICBHI's and
HF_Lung's classes), or the identity when both have the same class names.

Writes ``--out`` (default ``RUN/on_<dataset>_<split>``): ``results.json`` and
``predictions.csv`` as a run writes them (scores in the mapped classes, patient-bootstrap
intervals, the map under ``evaluation``; a mapped annotation's original class in the
column ``original_class``) and the run's ``config.json``, so ``report --workdir=OUT`` and
``report --compare`` read it like a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
ORIGINAL = "original_class"   # predictions.csv column: the dataset's class before the map
ANNOTATIONS, PREDICTIONS = "annotations", "predictions"   # the side a map is applied to


@dataclasses.dataclass(frozen=True)
class ClassMap:
    """How a run's outputs and a dataset's annotations meet: the classes scored (normal
    first), and which side the map ``table`` (class -> class, '' = left out) applies to."""
    classes: tuple
    side: str          # ANNOTATIONS (dataset classes onto the run's) | PREDICTIONS (the
                       # run's onto the dataset's)
    table: dict
    origin: str        # where the map comes from, for results.json

    def annotated(self, dataset_classes) -> np.ndarray:
        """int [T]: each dataset class's index among ``classes`` (-1: left out)."""
        if self.side == PREDICTIONS:
            return np.arange(len(dataset_classes))
        return np.array([self.classes.index(self.table[c]) if self.table[c] else -1
                         for c in dataset_classes], np.int64)

    def probabilities(self, probs: np.ndarray, run_classes) -> np.ndarray:
        """[n, len(classes)]: the run's probabilities, summed per class scored."""
        if self.side == ANNOTATIONS:
            return np.asarray(probs, np.float32)
        onto = np.zeros((len(run_classes), len(self.classes)), np.float32)
        for i, c in enumerate(run_classes):
            onto[i, self.classes.index(self.table[c])] = 1.0
        return np.asarray(probs, np.float32) @ onto


def parse_mapping(text: str) -> dict:
    """``--mapping``: a JSON file holding one object ``{class: class}``, or inline
    ``'from=to,from=to'`` (a class mapped to nothing, ``'Poor Quality='``, is left out)."""
    if text.endswith(".json") or os.path.isfile(text):
        try:
            table = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--mapping={text}: not a readable JSON file ({e})") from None
        if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise ValueError(f"--mapping={text}: expected one JSON object of class names, "
                             '{"from class": "to class", ...}')
        return table
    table = {}
    for item in [t for t in text.split(",") if t.strip()]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--mapping: {item!r} is not 'from=to'; expected "
                             "'from=to,from=to' or a JSON file")
        table[key.strip()] = value.strip()
    return table


def _fits(table: dict, keys, values, allow_empty: bool) -> bool:
    known = set(values) | ({""} if allow_empty else set())
    return set(table) == set(keys) and set(table.values()) <= known


def class_map(run_classes, dataset_classes, table: dict | None = None) -> ClassMap:
    """The `ClassMap` of a run's classes and a dataset's: ``table`` if given (onto the
    run's classes, or the run's onto the dataset's), else the identity when both name the
    same classes, else a declared map; ValueError saying what is missing."""
    from resp_jax.data import sources

    run_classes, dataset_classes = tuple(run_classes), tuple(dataset_classes)
    if table is not None:
        if _fits(table, dataset_classes, run_classes, allow_empty=True):
            return ClassMap(run_classes, ANNOTATIONS, dict(table), "--mapping")
        if _fits(table, run_classes, dataset_classes, allow_empty=False):
            return ClassMap(dataset_classes, PREDICTIONS, dict(table), "--mapping")
        raise ValueError(
            f"--mapping {table} maps neither the dataset's classes {dataset_classes} onto "
            f"the run's {run_classes} (every dataset class once; '' leaves one out) nor the "
            f"run's onto the dataset's (every run class once)")
    if set(run_classes) == set(dataset_classes):
        return ClassMap(run_classes, ANNOTATIONS, {c: c for c in dataset_classes},
                        "the same class names")
    for owner, other, declared in sources.declared_maps():
        origin = f"declared by {owner} ({owner} onto {other}; docs/method.md §13.2)"
        if _fits(declared, dataset_classes, run_classes, allow_empty=True):
            return ClassMap(run_classes, ANNOTATIONS, declared, origin)
        if _fits(declared, run_classes, dataset_classes, allow_empty=False):
            return ClassMap(dataset_classes, PREDICTIONS, declared, origin)
    raise ValueError(f"no class map between the run's classes {run_classes} and the "
                     f"dataset's {dataset_classes}: pass --mapping (e.g. "
                     f"'{dataset_classes[0]}={run_classes[0]},...')")


def target_config(run, dataset: str, root: str, split: str | None, tfds_dir: str | None,
                  skip_bad: bool = False):
    """The run's inference config (its preprocessing and standardisation) reading ``split``
    of ``dataset`` under ``root`` (its official splits and classes)."""
    from resp_jax.data import sources, synthetic

    source = sources.get(dataset)
    root = root or str(synthetic.default_dataset(dataset))
    schema, splits, normal = source.describe(root)
    split = split or source.test_split_of(splits)
    if split not in splits:
        raise ValueError(f"--split={split}: {dataset} has the splits {splits}")
    config = run.inference_config()
    config.data.update(name=dataset, root=root, classes=schema.classes, normal_class=normal,
                       fields=schema.to_config(), test_split=split, protocol=sources.OFFICIAL,
                       held_out="", skip_bad=skip_bad,
                       tfds_dir=run.config.data.tfds_dir if tfds_dir is None else tfds_dir)
    return config


@dataclasses.dataclass
class Evaluation:
    """A run evaluated on a dataset split: its predictions in the mapped classes."""
    predictions: object        # evaluation.Predictions (cycles the map leaves out dropped)
    cmap: ClassMap
    dataset_classes: tuple     # the dataset's own classes
    left_out: dict             # dataset class -> cycles left out by the map ('' targets)
    skipped: int               # items the reader skipped (--skip_bad)


def evaluate(run, config, table: dict | None = None) -> Evaluation:
    """The run on the dataset split of ``config`` (`target_config`), through the class map
    of `class_map` (``table``: a given one)."""
    from resp_jax import evaluation
    from resp_jax.data import feature_store, metadata, pipeline, run_data

    split = config.data.test_split
    prepared = run_data.prepared_splits(config, splits=(split,))
    schema = metadata.schema(config.data)
    cmap = class_map(run.classes, schema.classes, table)
    feats = feature_store.Features(prepared, config)
    out = run.outputs(pipeline.eval_batches(feats, config, split,
                                            global_batch=config.eval.batch_size))
    p = evaluation.from_outputs(feats[split], {"label": out["label"], "pred": out["prediction"],
                                               "prob": out["probabilities"]}, schema)
    kept, left_out = through_map(p, cmap, run.classes)
    if not len(kept):
        raise ValueError(f"every cycle of {config.data.name} {split} is of a class the map "
                         f"leaves out ({left_out})")
    return Evaluation(kept, cmap, tuple(schema.classes), left_out, len(prepared.skipped))


def through_map(p, cmap: ClassMap, run_classes) -> tuple:
    """The run's predictions ``p`` of a dataset's cycles (in the dataset's classes, with the
    run's probabilities) in ``cmap``'s classes: the labels or the probabilities mapped, the
    prediction the arg max of the probabilities scored, each mapped annotation's own class
    in the column `ORIGINAL`; the cycles of a class mapped to '' dropped and counted
    (dataset class -> cycles)."""
    original, fields = p.label, dict(p.fields)
    if cmap.side == ANNOTATIONS and any(k != v for k, v in cmap.table.items()):
        if ORIGINAL in fields:
            raise ValueError(f"a metadata field of {p.dataset} is named {ORIGINAL!r}, the "
                             "column of the classes before the map")
        fields[ORIGINAL] = np.asarray(p.classes)[original]
    probs = cmap.probabilities(p.probabilities, run_classes)
    mapped = dataclasses.replace(p, classes=tuple(cmap.classes), fields=fields,
                                 label=cmap.annotated(p.classes)[original],
                                 probabilities=probs, predicted=probs.argmax(axis=-1))
    counts = np.bincount(original, minlength=len(p.classes))
    left_out = {c: int(counts[i]) for i, c in enumerate(p.classes)
                if cmap.side == ANNOTATIONS and not cmap.table[c] and counts[i]}
    return mapped.take(np.flatnonzero(mapped.label >= 0)), left_out


def results_of(run, config, ev: Evaluation, resamples: int) -> dict:
    """What results.json holds for an evaluation: a run's keys, the scores in the mapped
    classes with their patient-bootstrap intervals, and the map."""
    from resp_jax import evaluation

    res, p, cmap = run.results, ev.predictions, ev.cmap
    return {"method": res["method"], "dataset": config.data.name, "seed": res["seed"],
            "selection": res["selection"], "stage": res["stage"], "epoch": res["epoch"],
            "test": p.scores(), "test_split": config.data.test_split,
            "init_from": res.get("init_from"), "cycles": {"test": len(p)},
            "skipped": ev.skipped, "norm": res.get("norm"),
            "test_interval": evaluation.bootstrap(p, resamples),
            "bootstrap": evaluation.bootstrap_record(p, resamples),
            "evaluation": {"run": str(run.workdir), "run_dataset": run.dataset,
                           "run_test_split": res["test_split"],
                           "run_classes": list(run.classes),
                           "dataset_classes": list(ev.dataset_classes),
                           "classes": list(cmap.classes), "mapped": cmap.side,
                           "map": cmap.table, "map_from": cmap.origin,
                           "left_out": ev.left_out}}


def output_dir(out, workdir, dataset: str, split: str) -> Path:
    """``--out``, or RUN/on_<dataset>_<split>; never the run's own directory."""
    path = Path(out) if out else Path(workdir) / f"on_{dataset}_{split}"
    if path.resolve() == Path(workdir).resolve():
        raise ValueError(f"--out={out} is the run's directory; its results.json would be "
                         "overwritten: give another folder")
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resp_jax import cli, evaluation, finished_run, logging_utils
    from resp_jax.data.records import DataError

    try:
        run = finished_run.load(FLAGS.workdir)
        config = target_config(run, FLAGS.dataset, FLAGS.data_dir, FLAGS.split,
                               FLAGS.tfds_dir, FLAGS.skip_bad)
        out = output_dir(FLAGS.out, FLAGS.workdir, FLAGS.dataset, config.data.test_split)
        table = parse_mapping(FLAGS.mapping) if FLAGS.mapping else None
        ev = evaluate(run, config, table)
        resamples = FLAGS.resamples or int(run.config.eval.get(
            "bootstrap_resamples", evaluation.RESAMPLES))
        results = results_of(run, config, ev, resamples)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    p, cmap = ev.predictions, ev.cmap
    evaluation.write(out / evaluation.PREDICTIONS_FILE, p)
    logging_utils.write_json(out / finished_run.CONFIG_FILE, run.config.to_dict())
    logging_utils.write_json(out / finished_run.RESULTS_FILE, results)
    side = ("annotations mapped onto the run's classes" if cmap.side == ANNOTATIONS
            else "the run's probabilities summed onto the dataset's classes")
    print(f"{run.dataset} run {FLAGS.workdir} on {FLAGS.dataset} {config.data.test_split}: "
          f"{len(p)} cycles in the classes {list(cmap.classes)} ({side}; map: {cmap.origin})"
          + (f"; left out: {ev.left_out}" if ev.left_out else ""), flush=True)
    print(cli.summary_line(results), flush=True)
    print(f"outputs in {out}", flush=True)
    return 0


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so the modules import together)."""
    from resp_jax.data import sources

    flags.DEFINE_string("workdir", None, "A finished run (resp_jax.main --workdir).")
    flags.DEFINE_enum("dataset", None, list(sources.NAMES), "The dataset to evaluate on.")
    flags.DEFINE_string("data_dir", "", "Its root (a manifest: the CSV); default: its "
                        "synthetic default.")
    flags.DEFINE_string("split", None, "Its split to evaluate on; default: the one it "
                        "reports (ICBHI test, SPRSound inter_test, ...).")
    flags.DEFINE_string("mapping", None, "Class map: a JSON file {class: class} or "
                        "'from=to,from=to'; default: the declared one (docs/method.md §13.2).")
    flags.DEFINE_string("tfds_dir", None, "Prepared-data cache; default: the run's "
                        "data.tfds_dir.")
    flags.DEFINE_bool("skip_bad", False, "Skip (and count) unreadable files of the dataset "
                      "instead of stopping at the first.")
    flags.DEFINE_string("out", None, "Output folder; default RUN/on_<dataset>_<split>.")
    flags.DEFINE_integer("resamples", None, "Patient-bootstrap resamples (default: the "
                         "run's eval.bootstrap_resamples).", lower_bound=1)
    flags.mark_flags_as_required(["workdir", "dataset"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
