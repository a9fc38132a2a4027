"""A synthetic copy of the organisers' SPRSound repository layout: the 2022 release in
``BioCAS2022/`` and one later challenge test set per year in ``BioCAS<YEAR>/test<YEAR>_wav``
and ``test<YEAR>_json`` (`sprsound_releases`), with the later sets' quirks: new patients,
locations p5-p8 (2024 on), an anonymised recording (empty patient id) and, from 2024, JSON
files without ``record_annotation``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from resp_jax.data import sprsound_releases
from resp_jax.data.synthetic.sounds import _render_all
from resp_jax.data.synthetic.sprsound import event_recording, patients, write_sprsound

RECORDINGS = 60   # of the 2022 release; each later test set has a fifth as many (at least 3)


def write_sprsound_releases(out, *, recordings: int = RECORDINGS, seed: int = 0,
                            workers: int = 1) -> Path:
    """Writes the 2022 release (`write_sprsound`, 'biocas' layout) and the later test sets
    of `sprsound_releases.SYNTHETIC_YEARS` into ``out``; returns ``out``."""
    out = write_sprsound(out, recordings=recordings, seed=seed, layout="biocas",
                         workers=workers)
    count = max(3, recordings // 5)
    for k, year in enumerate(sprsound_releases.SYNTHETIC_YEARS):
        rng = np.random.default_rng([seed, int(year)])
        json_dir = out / f"BioCAS{year}" / f"test{year}_json"
        wav_dir = out / f"BioCAS{year}" / f"test{year}_wav"
        json_dir.mkdir(parents=True)
        wav_dir.mkdir(parents=True)
        people = patients(max(2, count // 2), rng)
        locations = 8 if year >= "2024" else 4
        rec_no = 5000 * (k + 2)
        recs = []
        for i in range(count):
            p = people[i % len(people)]
            pid = "" if i == count - 1 else p["pid"]   # the last one anonymised
            rec_no += int(rng.integers(1, 40))
            location = 1 + (4 + i) % locations               # 2024: from p5 on
            stem = f"{pid}_{p['age']:.1f}_{p['gender']}_p{location}_{rec_no}"
            doc, rec = event_recording(stem, p["age"] < 5.0, rng)
            if year >= "2024":
                doc.pop("record_annotation")
            (json_dir / f"{stem}.json").write_text(json.dumps(doc, indent=4))
            recs.append(rec)
        _render_all(recs, seed, wav_dir, workers)
    return out
