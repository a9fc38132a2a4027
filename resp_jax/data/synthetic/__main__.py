"""python -m resp_jax.data.synthetic --dataset=NAME --out=DIR [--recordings=N]
    [--patients=N] [--from_annotations=ICBHI_ROOT] [--seed=0] [--workers=1]:
    writes a synthetic dataset with its Source's writer (manifest: DIR/audio and
    DIR/manifest.csv; --patients and --from_annotations: ICBHI's writer only)."""

from __future__ import annotations

import time

from resp_jax.data import sources
from resp_jax.data.synthetic import write


def main(argv) -> None:
    from absl import flags
    del argv
    f = flags.FLAGS
    start = time.time()
    kw = dict(seed=f.seed, workers=f.workers, patients=f.patients,
              from_annotations=f.from_annotations)
    if f.recordings is not None:
        kw["recordings"] = f.recordings
    try:
        out = write(f.dataset, f.out, **kw)
    except ValueError as e:
        raise SystemExit(f"--dataset={f.dataset}: {e}") from None
    result = sources.get(f.dataset).read(out)
    print(f"wrote {len({c.stem for c in result.cycles})} recordings with "
          f"{len(result.cycles)} cycles ({f.dataset}) to {out} in {time.time() - start:.1f} s")


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_enum("dataset", None, list(sources.NAMES), "Which dataset layout to write.")
    flags.DEFINE_string("out", None, "Folder to write the dataset root into.")
    flags.DEFINE_string("from_annotations", None,
                        "ICBHI root whose annotation files get a synthetic wav each.")
    flags.DEFINE_integer("recordings", None, "Number of recordings (default: the writer's; "
                         "ignored with --from_annotations).")
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
