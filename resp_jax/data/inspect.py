"""Summarise a dataset root as the readers see it.

    python -m resp_jax.data.inspect --dataset=icbhi --data_dir=../shared/data/icbhi2017 \\
        --annotations_only
    python -m resp_jax.data.inspect --dataset=manifest --data_dir=PATH/manifest.csv

Prints a human-readable table, then as its last line one JSON object: cycles, recordings,
patients and classes per split, metadata counts, and the skipped items.
"""

from __future__ import annotations

import collections
import json
import sys

from absl import app, flags

from resp_jax.data import metadata, records, sources

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(sources.NAMES), "Which dataset's layout to read.")
flags.DEFINE_string("data_dir", None, "Root of the distributed dataset files (manifest: the "
                    "CSV).")
flags.DEFINE_bool("annotations_only", False,
                  "Read the annotation and metadata files only; do not open the WAV files.")
flags.DEFINE_bool("skip_bad", False,
                  "Skip bad items (listed in the output) instead of stopping at the first one.")

UNKNOWN = "unknown"


def _count(values) -> dict:
    counts = collections.Counter(UNKNOWN if v is None else v for v in values)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == UNKNOWN, str(kv[0]))))


def summarize(dataset: str, result: records.ReadResult) -> dict:
    """The JSON summary of a read: per split counts, metadata counts, skipped items."""
    splits = {}
    for split in result.splits:
        cycles = result.split(split)
        labels = collections.Counter(c.label for c in cycles)
        splits[split] = {
            "cycles": len(cycles),
            "recordings": len({c.stem for c in cycles}),
            "patients": len({c.patient for c in cycles} - {""}),   # known ones
            "classes": {name: labels.get(i, 0)
                        for i, name in enumerate(result.classes)},
        }
    fields = sources.get(dataset).inspect_view(result)   # the metadata the dataset counts
    meta = {f: _count(metadata.value(c, f) for c in result.cycles) for f in fields}
    return {"dataset": dataset, "splits": splits, "metadata": meta,
            "skipped": [s.to_json() for s in result.skipped]}


def _table(summary: dict, result: records.ReadResult, dropped: list) -> list:
    dataset = summary["dataset"]
    note = sources.get(dataset).dropped_note
    names = result.classes
    width = max(10, *(len(n) for n in names))
    lines = [f"{dataset}: {len(result.cycles)} cycles, "
             f"{len({c.stem for c in result.cycles})} recordings, "
             f"{len({c.patient for c in result.cycles} - {''})} patients"]
    header = f"{'split':<12}{'cycles':>8}{'recs':>7}{'patients':>10}  " + "".join(
        f"{n:>{width + 1}}" for n in names)
    lines.append(header)
    for split, s in summary["splits"].items():
        lines.append(f"{split:<12}{s['cycles']:>8}{s['recordings']:>7}{s['patients']:>10}  "
                     + "".join(f"{s['classes'][n]:>{width + 1}}" for n in names))
    for field, counts in summary["metadata"].items():
        lines.append(f"{field}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if dropped:
        lines.append(f"{len(dropped)} {note or 'annotation(s) left out by the reader'}")
    lines.append(f"skipped: {len(result.skipped)}")
    for s in result.skipped[:20]:
        where = s.path if s.line is None else f"{s.path}:{s.line}"
        lines.append(f"  {where}: {s.reason}")
    if len(result.skipped) > 20:
        lines.append(f"  ... and {len(result.skipped) - 20} more (all in the JSON line)")
    return lines


def main(argv) -> int:
    del argv
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    dropped: list = []
    try:
        result = sources.get(FLAGS.dataset).read(
            FLAGS.data_dir, annotations_only=FLAGS.annotations_only, skip_bad=FLAGS.skip_bad,
            dropped=dropped)
    except records.DataError as e:
        print(f"error: {e}\n(use --skip_bad to skip bad items and list them)", file=sys.stderr)
        return 1
    summary = summarize(FLAGS.dataset, result)
    print("\n".join(_table(summary, result, dropped)))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["dataset", "data_dir"])
    app.run(main)
