"""Synthetic datasets written in their real distributed layouts, one writer per dataset (its
`Source` names it): ICBHI 2017, SPRSound 2022 and its later test sets, HF_Lung_V1, and a
manifest example (README, "Your own recordings": ICBHI-like recordings listed in one CSV).

They let every stage run (and be tested) without the real recordings, and they go through
the same readers as real data. The sounds are made to be learnable but not trivial:
- breath noise: Gaussian noise with a breath-like spectrum (brighter for children), shaped
  by an inspiration/expiration envelope per cycle, plus heart thumps;
- crackles: short damped broadband transients (fine: short and high; coarse: longer, lower);
- wheezes: tonal components between 100 and 1000 Hz with harmonics and a slow pitch drift
  (rhonchi low with many harmonics, stridor high and inspiratory, for SPRSound);
- levels vary from obvious to faint, and some normal cycles hold a stray click or a faint
  short tone, so a model cannot key on presence alone;
- each device colours the sound (its own frequency response, hiss, hum), and records at its
  own sample rate (ICBHI: 4, 10 or 44.1 kHz; SPRSound 8 kHz; HF_Lung 4 kHz), with 16-, 24-
  or 32-bit PCM;
- labels depend on the patient's diagnosis and age group (and so correlate with sex and age).

    python -m resp_jax.data.synthetic --dataset=icbhi --out=/tmp/icbhi_syn [--recordings=48]
    python -m resp_jax.data.synthetic --dataset=manifest --out=/tmp/mine   # /tmp/mine/manifest.csv
    python -m resp_jax.data.synthetic --dataset=icbhi --out=/tmp/icbhi_full \\
        --from_annotations=../shared/data/icbhi2017     # a wav for each real annotation file

Every recording has its own random stream derived from (seed, stem), so the output is a pure
function of the arguments, whatever the number of worker processes.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path

from absl import logging

from resp_jax.data import sources
# The public API (the writers and their constants), whichever module holds it.
from resp_jax.data.synthetic.icbhi import ICBHI_LOCATIONS, icbhi_rate, write_icbhi  # noqa: F401
from resp_jax.data.synthetic.manifest import from_icbhi, write_manifest  # noqa: F401
from resp_jax.data.synthetic.sounds import (  # noqa: F401
    _COMPLETE, CACHE_DIR, CACHE_VERSION, SPRSOUND_RATE, SUBTYPES, render)
from resp_jax.data.synthetic.sprsound import (  # noqa: F401
    SPRSOUND_LAYOUTS, sprsound_split_dirs, write_sprsound)


def write(dataset: str, out, **kw) -> Path:
    """Writes a synthetic ``dataset`` into ``out`` with its Source's writer; returns its root
    (a manifest: its CSV). An option the writer does not take (``from_annotations``, which
    only ICBHI's takes; ``patients``) is an error naming it, unless it is None."""
    writer = sources.get(dataset).writer()
    taken = inspect.signature(writer).parameters
    for key in [k for k in kw if k not in taken]:
        if kw.pop(key) is not None:
            raise ValueError(f"{key} is not an option of the synthetic {dataset} writer; it "
                             f"takes {', '.join(k for k in taken if k != 'out')}")
    return writer(out, **kw)


def default_dataset(dataset: str, cache_dir=None) -> Path:
    """The small synthetic dataset used when no data root is given: made once, then reused.

    It lives in ``<cache_dir>/<dataset>-<CACHE_VERSION>`` (``cache_dir`` defaults to
    ~/.cache/resp_jax/synthetic) and is written to a temporary folder, checked with the
    reader, then renamed into place, so a crash or a concurrent run never leaves half of one.
    Its size is the Source's ``synthetic_default``.
    """
    source = sources.get(dataset)
    if not source.synthetic_default:
        raise ValueError(f"no synthetic default for {dataset}: set data.root ("
                         f"python -m resp_jax.data.synthetic --dataset={dataset} writes one)")
    parent = Path(os.path.expanduser(str(cache_dir or CACHE_DIR)))
    target = parent / f"{dataset}-{CACHE_VERSION}"
    if not (target / _COMPLETE).is_file():
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
        tmp.chmod(0o755)   # mkdtemp makes it private; the cache is an ordinary folder
        try:
            write(dataset, tmp, recordings=source.synthetic_default, seed=0)
            source.read(tmp)   # never cache something the reader rejects
            (tmp / _COMPLETE).write_text(CACHE_VERSION + "\n")
            if target.exists() and not (target / _COMPLETE).is_file():  # a crashed run's
                shutil.rmtree(target, ignore_errors=True)  # leftover, not a concurrent run's
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / _COMPLETE).is_file():   # not a concurrent run that won
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logging.info("Using the synthetic %s dataset (no data root given) in %s", dataset, target)
    return target
