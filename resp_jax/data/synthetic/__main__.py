"""python -m resp_jax.data.synthetic --dataset=icbhi|sprsound|manifest --out=DIR
    [--recordings=N] [--patients=N] [--from_annotations=ICBHI_ROOT] [--seed=0] [--workers=1]:
    writes a synthetic dataset (manifest: DIR/audio and DIR/manifest.csv)."""

from __future__ import annotations

import time

from resp_jax.data import readers, records
from resp_jax.data.synthetic import write


def main(argv) -> None:
    from absl import flags
    del argv
    f = flags.FLAGS
    start = time.time()
    kw = dict(seed=f.seed, workers=f.workers)
    if f.recordings is not None:
        kw["recordings"] = f.recordings
    if f.patients is not None:
        if f.dataset != records.ICBHI:
            raise SystemExit("--patients is for --dataset=icbhi")
        kw["patients"] = f.patients
    if f.from_annotations:
        if f.dataset != records.ICBHI:
            raise SystemExit("--from_annotations takes an ICBHI root; use it with --dataset=icbhi")
        kw["from_annotations"] = f.from_annotations
    out = write(f.dataset, f.out, **kw)
    result = readers.read(f.dataset, out)
    print(f"wrote {len({c.stem for c in result.cycles})} recordings with "
          f"{len(result.cycles)} cycles ({f.dataset}) to {out} in {time.time() - start:.1f} s")


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_enum("dataset", None, list(records.DATASETS), "Which dataset layout to write.")
    flags.DEFINE_string("out", None, "Folder to write the dataset root into.")
    flags.DEFINE_string("from_annotations", None,
                        "ICBHI root whose annotation files get a synthetic wav each.")
    flags.DEFINE_integer("recordings", None, "Number of recordings (default: the small "
                         "default dataset's size; ignored with --from_annotations).")
    flags.DEFINE_integer("patients", None, "ICBHI: number of patients sharing the recordings "
                         "(default: a third of them).")
    flags.DEFINE_integer("seed", 0, "Random seed; the output is a pure function of it.")
    flags.DEFINE_integer("workers", 1, "Processes rendering audio (the output does not "
                         "depend on it).")
    flags.mark_flags_as_required(["dataset", "out"])


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
