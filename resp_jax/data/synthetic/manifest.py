"""A manifest dataset (README, "Your own recordings"): one CSV over recordings, written through
`manifest.write`, from an ICBHI root (real or synthetic) or as a small synthetic example."""

from __future__ import annotations

import shutil
from pathlib import Path

import soundfile as sf

from resp_jax.data import icbhi, manifest
from resp_jax.data.synthetic.icbhi import RECORDINGS, write_icbhi
from resp_jax.data.synthetic.sounds import _fresh

# ICBHI's metadata as manifest columns ('age_group' follows from 'age', as in ICBHI).
ICBHI_FIELDS = ("sex", "age", "device", "location", "mode", "diagnosis")
CSV_NAME = "manifest.csv"
FLAC_EVERY = 4   # the example stores every 4th recording as FLAC: any soundfile format works


def _text(value) -> str | None:
    if value is None:
        return None
    return repr(value) if isinstance(value, float) else str(value)


def icbhi_rows(root, audio=None) -> list:
    """One manifest row per cycle of an ICBHI root, in the ICBHI reader's order, with its
    annotated (unclamped) times; ``audio(stem)`` gives the ``path`` cell (default: the
    absolute path of the root's wav)."""
    root = Path(root)
    audio_dir = icbhi.locate(root)["audio_dir"]
    audio = audio or (lambda stem: str((audio_dir / f"{stem}.wav").resolve()))
    rows = []
    for c in icbhi.read(root, annotations_only=True).cycles:
        row = {"path": audio(c.stem), "start": _text(c.start), "end": _text(c.end),
               "label": c.label_name, "split": c.split, "patient": c.patient}
        row.update({f: _text(getattr(c, f)) for f in ICBHI_FIELDS})
        if c.age is not None:
            row["age"] = f"{c.age:g}"
        rows.append(row)
    return rows


def from_icbhi(root, csv_path) -> Path:
    """A manifest CSV over the recordings of an ICBHI root (absolute paths): the conversion
    script a user of another public set would write."""
    return manifest.write(csv_path, icbhi_rows(root), ICBHI_FIELDS)


def write_manifest(out, *, recordings: int = RECORDINGS, seed: int = 0,
                   workers: int = 1) -> Path:
    """A small example in ``out``: synthetic ICBHI-like recordings in ``out/audio`` (some as
    FLAC) and ``out/manifest.csv`` naming them relative to itself; returns the CSV."""
    out = _fresh(out)
    staging = out / ".icbhi"
    write_icbhi(staging, recordings=recordings, seed=seed, workers=workers)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True)
    names = {}
    stems = sorted(p.stem for p in (staging / icbhi.AUDIO_DIR).glob("*.wav"))
    for i, stem in enumerate(stems):
        src = staging / icbhi.AUDIO_DIR / f"{stem}.wav"
        info = sf.info(str(src))
        if i % FLAC_EVERY == 1 and info.subtype in ("PCM_16", "PCM_24"):
            wave, rate = sf.read(str(src), dtype="int32" if info.subtype == "PCM_24" else "int16")
            sf.write(str(audio_dir / f"{stem}.flac"), wave, rate, subtype=info.subtype)
            names[stem] = f"audio/{stem}.flac"
        else:
            shutil.copyfile(src, audio_dir / f"{stem}.wav")
            names[stem] = f"audio/{stem}.wav"
    csv_path = manifest.write(out / CSV_NAME, icbhi_rows(staging, names.__getitem__),
                              ICBHI_FIELDS)
    shutil.rmtree(staging)
    return csv_path

