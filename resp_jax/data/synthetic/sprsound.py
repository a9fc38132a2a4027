"""A synthetic SPRSound 2022 root in either layout of the release (event JSON per wav)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from resp_jax.data import sprsound
from resp_jax.data.synthetic.sounds import (SPRSOUND_RATE, Sound, _breath_cycles, _fresh,
                                            _Recording, _render_all)

RECORDINGS = 60   # the writer's default size


# --------------------------------------------------------------------------------------------
# SPRSound

_SPR_SOUNDS = {  # class name -> Sound (crackle kind chosen per event for Wheeze+Crackle)
    "Normal": Sound(),
    "Rhonchi": Sound(tone="rhonchi"),
    "Wheeze": Sound(tone="wheeze"),
    "Stridor": Sound(tone="stridor"),
    "Coarse Crackle": Sound(crackle="coarse"),
    "Fine Crackle": Sound(crackle="fine"),
    "Wheeze+Crackle": Sound(crackle="fine", tone="wheeze"),
}
# Event class probabilities (sprsound.CLASSES order) for babies (< 5) and kids.
_SPR_P = {
    "baby": (0.35, 0.15, 0.18, 0.05, 0.04, 0.17, 0.06),
    "kid": (0.6, 0.04, 0.08, 0.01, 0.15, 0.07, 0.05),
}
SPRSOUND_LAYOUTS = {
    "plain": ("", "train_wav", "train_json", "test_wav", "test_json"),
    "biocas": ("BioCAS2022", "train2022_wav", "train2022_json", "test2022_wav",
               "test2022_json"),
}


def sprsound_split_dirs(root, layout: str = "plain", *, create: bool = False) -> dict:
    """split -> (wav folder, json folder) of a SPRSound 2022 root in ``layout``."""
    base, train_wav, train_json, test_wav, test_json = SPRSOUND_LAYOUTS[layout]
    b = Path(root) / base if base else Path(root)
    dirs = {"train": (b / train_wav, b / train_json),
            "inter_test": (b / test_wav, b / test_json / "inter_test_json"),
            "intra_test": (b / test_wav, b / test_json / "intra_test_json")}
    if create:
        for wav_dir, json_dir in dirs.values():
            wav_dir.mkdir(parents=True, exist_ok=True)
            json_dir.mkdir(parents=True, exist_ok=True)
    return dirs


def _record_annotation(classes: list) -> str:
    cas = any(c in ("Rhonchi", "Wheeze", "Stridor", "Wheeze+Crackle") for c in classes)
    das = any("Crackle" in c for c in classes)
    return {(False, False): "Normal", (True, False): "CAS", (False, True): "DAS",
            (True, True): "CAS & DAS"}[(cas, das)]


def event_recording(stem: str, child: bool, rng, poor: bool = False) -> tuple:
    """``(JSON document, _Recording)`` of one synthetic recording: 8-15 s of breaths, each an
    event of a class drawn for the age group (a few left unannotated); ``poor``: a
    poor-quality recording without events."""
    classes = sprsound.CLASSES
    duration = float(rng.uniform(8.0, 15.0))
    cycles = _breath_cycles(duration, True, rng)
    cycles = cycles[cycles[:, 1] <= duration]
    probs = np.asarray(_SPR_P["baby" if child else "kid"])
    names = [classes[int(k)] for k in rng.choice(len(classes), len(cycles), p=probs)]
    annotated = rng.random(len(cycles)) < 0.9   # a few breaths are left unannotated
    sounds = []
    for name in names:
        s = _SPR_SOUNDS[name]
        if name == "Wheeze+Crackle" and rng.random() < 0.5:
            s = dataclasses.replace(s, crackle="coarse")
        if name == "Normal" and rng.random() < 0.15:
            s = dataclasses.replace(s, distract=True)
        sounds.append(s)
    sounds = [s if keep else Sound() for s, keep in zip(sounds, annotated)]
    events = [] if poor else [
        {"start": str(int(round(s * 1000))), "end": str(int(round(e * 1000))), "type": name}
        for (s, e), name, keep in zip(cycles, names, annotated) if keep]
    order = rng.permutation(len(events))
    doc = {"record_annotation": "Poor Quality" if poor else
           _record_annotation([e["type"] for e in events]),
           "event_annotation": [events[j] for j in order]}
    return doc, _Recording(stem=stem, sr=SPRSOUND_RATE, n=int(round(duration * SPRSOUND_RATE)),
                           cycles=cycles, sounds=sounds, device="Yunting", child=child,
                           subtype="PCM_16")


def patients(n: int, rng) -> list:
    """``n`` synthetic patients (ids of 7 to 9 digits, ages alternating kid and baby)."""
    out = []
    for i in range(n):
        digits = 7 + i % 3
        pid = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
        age = round(float(rng.uniform(0.1, 4.9) if i % 2 else rng.uniform(5.0, 17.9)), 1)
        out.append(dict(pid=pid, age=age, gender=int(rng.integers(0, 2))))
    return out


def write_sprsound(out, *, recordings: int = RECORDINGS,
                   seed: int = 0, layout: str = "plain", workers: int = 1) -> Path:
    """Writes a synthetic SPRSound 2022 root into ``out`` (``layout`` 'plain' or 'biocas').

    Patients are train-only, train + intra-patient test, or inter-patient test; recordings
    are 8 kHz 16-bit WAV with a one-line JSON of unsorted events (milliseconds as strings).
    """
    if recordings < 3:
        raise ValueError(f"recordings={recordings}; expected at least 3 (one per split)")
    if layout not in SPRSOUND_LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {tuple(SPRSOUND_LAYOUTS)}")
    out = _fresh(out)
    dirs = sprsound_split_dirs(out, layout, create=True)

    rng = np.random.default_rng(seed)
    n_patients = max(3, round(recordings / 3))
    n_inter = max(1, round(0.25 * n_patients))
    people = [dict(p, inter=i < n_inter) for i, p in enumerate(patients(n_patients, rng))]
    by_split: dict = {s: [] for s in dirs}
    rec_no = int(rng.integers(1, 500))
    for i in range(recordings):
        p = people[i % n_patients]
        if p["inter"]:
            split = "inter_test"
        else:
            split = "intra_test" if (i // n_patients) % 4 == 1 else "train"
        rec_no += int(rng.integers(1, 40))
        stem = f"{p['pid']}_{p['age']:.1f}_{p['gender']}_p{1 + i % 4}_{rec_no}"
        doc, rec = event_recording(stem, p["age"] < 5.0, rng,
                                   poor=i == recordings - 1 and recordings >= 10)
        (dirs[split][1] / f"{stem}.json").write_text(json.dumps(doc))
        by_split[split].append(rec)
    for split, recs in by_split.items():
        _render_all(recs, seed, dirs[split][0], workers)
    return out
