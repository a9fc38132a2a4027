"""Command line: export the frozen encoder features of a split with labels and metadata.

    python -m resp_jax.embed --workdir=DIR [--split=test] [--out=FILE.npz]

Writes one ``.npz`` (numpy.load reads it) with, per cycle of the split, in the dataset's order:

  features       float32 [n, D]  encoder output of the selected model (inference mode)
  probabilities  float32 [n, C]  classifier output;  prediction int32 [n]
  label          int32 [n]       class index; label_names [C]
  <field>        int32 [n]       code of every metadata field of the dataset (sex, age_group,
                                 device, location, mode, diagnosis; a manifest's columns;
                                 -1 unknown), with
                                 <field>_names holding the value of each code
  stem, patient  str [n]         recording and patient;  index int32 [n]: cycle in recording
  dataset, split str             e.g. 'icbhi', 'test'

``--split`` is 'train', 'test' (the split the run reports), any split of the dataset
(e.g. SPRSound's 'intra_test'), or 'val' for a run with eval.selection=val.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS



def embed(run, data, split: str) -> dict:
    """The arrays of the module docstring for ``split`` of a loaded run."""
    from resp_jax.data import metadata

    out = run.split_outputs(data, split)
    arrays = {"features": out["features"].astype(np.float32),
              "probabilities": out["probabilities"].astype(np.float32),
              "prediction": out["prediction"], "label": out["label"],
              "label_names": np.asarray(run.classes), "stem": out["stem"],
              "patient": out["patient"], "index": out["index"],
              "dataset": np.asarray(run.dataset), "split": np.asarray(out["split"])}
    for field in metadata.dataset_fields(run.schema)[1:]:
        arrays[field] = out["codes"][field]
        arrays[f"{field}_names"] = np.asarray(metadata.vocab(run.schema, field))
    return arrays


def output_path(out, workdir, split: str) -> Path:
    """``--out``, or <workdir>/embeddings_<split>.npz; '.npz' is appended when missing, as
    numpy.savez does, so the path printed is the file written."""
    path = Path(out or Path(workdir) / f"embeddings_{split}.npz")
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resp_jax import finished_run
    from resp_jax.data import run_data

    try:
        run = finished_run.load(FLAGS.workdir)
        arrays = embed(run, run_data.load(run.config), FLAGS.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = output_path(FLAGS.out, FLAGS.workdir, FLAGS.split)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    logging.info("wrote %s", out)
    print(f"{out}: {arrays['features'].shape[0]} cycles x {arrays['features'].shape[1]} "
          f"features ({run.dataset} {arrays['split']})", flush=True)
    return 0


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so the modules import together)."""
    flags.DEFINE_string("workdir", None, "A finished run (resp_jax.main --workdir).")
    flags.DEFINE_string("split", "test", "Split to embed: train, test, val, or a "
                        "dataset split name such as intra_test.")
    flags.DEFINE_string("out", None, "Output .npz; default <workdir>/embeddings_<split>.npz.")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
