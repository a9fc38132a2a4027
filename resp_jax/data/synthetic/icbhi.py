"""A synthetic ICBHI 2017 root in the distributed layout (wav, cycle annotations, official-
style split, demographics, diagnosis)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from resp_jax.data import icbhi
from resp_jax.data.synthetic.sounds import SUBTYPES, _breath_cycles, _fresh, _Recording, _render_all

RECORDINGS = 48   # the writer's default size (the run's synthetic default: icbhi.SOURCE)


# --------------------------------------------------------------------------------------------
# ICBHI 2017

ICBHI_LOCATIONS = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")
# Cycle label probabilities (normal, crackle, wheeze, both) per diagnosis.
_ICBHI_LABEL_P = {
    "Healthy": (0.85, 0.07, 0.05, 0.03),
    "URTI": (0.55, 0.2, 0.15, 0.1),
    "COPD": (0.25, 0.35, 0.2, 0.2),
    "Asthma": (0.25, 0.05, 0.6, 0.1),
    "LRTI": (0.4, 0.4, 0.1, 0.1),
    "Bronchiectasis": (0.3, 0.55, 0.05, 0.1),
    "Pneumonia": (0.35, 0.45, 0.1, 0.1),
    "Bronchiolitis": (0.2, 0.2, 0.4, 0.2),
}
_CHILD_DIAGNOSES = ("Healthy", "URTI", "Bronchiolitis", "Pneumonia", "Asthma")
_ADULT_DIAGNOSES = ("COPD", "COPD", "Bronchiectasis", "LRTI", "Healthy", "URTI", "Pneumonia")
# Device per patient in turn, so a small set has all four (and all three sample rates).
_DEVICE_TURN = ("AKGC417L", "Meditron", "Litt3200", "LittC2SE", "AKGC417L", "Meditron")


def icbhi_rate(device: str, turn: int) -> int:
    """Sample rate of a recording: Litt3200 4 kHz, LittC2SE 10 and 44.1 kHz in turn (by the
    recording's position ``turn``), the others 44.1 kHz."""
    if device == "Litt3200":
        return 4000
    if device == "LittC2SE":
        return 10000 if turn % 2 == 0 else 44100
    return 44100


def _icbhi_patients(n_patients: int, rng) -> list:
    patients = []
    for i in range(n_patients):
        child = rng.random() < 0.35
        age = (round(float(rng.choice([0.25, 0.5, 0.75, 1, 2, 3, 4, 5, 7, 9, 12, 14, 16])), 2)
               if child else int(rng.integers(19, 91)))
        diagnosis = str(rng.choice(_CHILD_DIAGNOSES if child else _ADULT_DIAGNOSES))
        sex = "M" if rng.random() < (0.7 if diagnosis == "COPD" else 0.5) else "F"
        patients.append(dict(pid=str(101 + i), age=age, sex=sex, child=child,
                             diagnosis=diagnosis, device=_DEVICE_TURN[i % len(_DEVICE_TURN)]))
    if n_patients >= 4:   # like patient 223: nothing known
        patients[-1].update(age=None, sex=None)
    return patients


def _demographics_line(p: dict, rng) -> str:
    def fmt(v):
        return "NA" if v is None else f"{v:g}"
    if p["age"] is None:
        fields = [p["pid"], "NA", "NA", "NA", "NA", "NA"]
    elif p["child"]:
        weight = round(3.5 + 3.0 * p["age"] + rng.uniform(-2, 2), 1)
        height = round(55 + 6.5 * p["age"] + rng.uniform(-5, 5))
        fields = [p["pid"], fmt(p["age"]), p["sex"], "NA", fmt(weight),
                  fmt(height) if rng.random() > 0.1 else "NA"]
    else:
        fields = [p["pid"], fmt(p["age"]), p["sex"], fmt(round(rng.uniform(17, 38), 2)), "NA",
                  "NA"]
    return "\t".join(fields)


def write_icbhi(out, *, recordings: int = RECORDINGS, seed: int = 0,
                from_annotations=None, workers: int = 1, patients: int | None = None) -> Path:
    """Writes a synthetic ICBHI 2017 root (docs/method.md §1.1 layout) into ``out``; returns ``out``.

    ``patients`` (default: a third of ``recordings``, at least 2) share the recordings in
    turn; about 40 % of them are test patients. Cycle labels follow each patient's diagnosis,
    so with few patients a model can score on the training split by telling patients apart
    (docs/benchmarks.md, "Two-stage methods on small sets").

    With ``from_annotations`` (an ICBHI root), writes one wav for each of its annotation
    files, long enough for its cycles, and copies its annotation and metadata files instead.
    """
    if from_annotations is None and recordings < 2:
        raise ValueError(f"recordings={recordings}; expected at least 2 (one per split)")
    if patients is not None and not 2 <= patients <= recordings:
        raise ValueError(f"patients={patients}; expected 2 .. recordings ({recordings}): every "
                         "patient has a recording, and each split a patient")
    out = _fresh(out)
    audio_dir = out / icbhi.AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)
    if from_annotations is not None:
        recs = _icbhi_from_annotations(Path(from_annotations), out, audio_dir)
    else:
        recs = _icbhi_generate(out, audio_dir, recordings, seed, patients)
    _render_all(recs, seed, audio_dir, workers)
    return out


def _icbhi_from_annotations(src: Path, out: Path, audio_dir: Path) -> list:
    found = icbhi.locate(src)
    result = icbhi.read(src, annotations_only=True)
    for path in found["annotations"]:
        shutil.copyfile(path, audio_dir / path.name)
    for key in ("split", "demographics", "diagnosis"):
        shutil.copyfile(found[key], out / found[key].name)
    by_stem: dict = {}
    for c in result.cycles:
        by_stem.setdefault(c.stem, []).append(c)
    recs = []
    for i, (stem, cycles) in enumerate(sorted(by_stem.items())):
        c0 = cycles[0]
        sr = icbhi_rate(c0.device, i)
        last = max(c.end for c in cycles)
        # Like the real files: the microphone recordings last 20 s, the others end with the
        # last cycle.
        duration = 20.0 if c0.device in ("AKGC417L", "Meditron") and last <= 20.0 else last
        recs.append(_Recording(
            stem=stem, sr=sr, n=int(math.ceil(duration * sr)),
            cycles=np.array([(c.start, c.end) for c in cycles]),
            labels=[c.label for c in cycles], device=c0.device,
            child=c0.age_group == "child", subtype=SUBTYPES[i % len(SUBTYPES)]))
    return recs


def _icbhi_generate(out: Path, audio_dir: Path, recordings: int, seed: int,
                    patients: int | None = None) -> list:
    rng = np.random.default_rng(seed)
    n_patients = patients or max(2, min(recordings, round(recordings / 3)))
    patients = _icbhi_patients(n_patients, rng)
    order = rng.permutation(n_patients)
    n_test = min(n_patients - 1, max(1, round(0.4 * n_patients)))
    test_patients = {patients[i]["pid"] for i in order[:n_test]}
    owner = [i % n_patients for i in range(recordings)]   # every patient has a recording

    recs, split_lines, littc2se = [], [], 0
    per_patient: dict = {}
    for i, p_idx in enumerate(owner):
        p = patients[p_idx]
        k = per_patient.get(p["pid"], 0)
        per_patient[p["pid"]] = k + 1
        device = p["device"]
        mode = "mc" if device == "AKGC417L" else "sc"
        loc = ICBHI_LOCATIONS[(k + int(p["pid"])) % len(ICBHI_LOCATIONS)]
        stem = f"{p['pid']}_{k + 1}b{1 + k % 3}_{loc}_{mode}_{device}"
        if device == "LittC2SE":
            littc2se += 1
        sr = icbhi_rate(device, littc2se)
        child = p["child"]
        duration = 20.0 if device in ("AKGC417L", "Meditron") else float(rng.uniform(15, 26))
        cycles = _breath_cycles(duration, child, rng)
        probs = np.asarray(_ICBHI_LABEL_P[p["diagnosis"]])
        labels = [int(v) for v in rng.choice(4, size=len(cycles), p=probs / probs.sum())]
        if i % 8 == 3:
            # A cycle past the end of the audio (docs/method.md §1.1): the file stops before it ends.
            n = int((cycles[-1, 1] - rng.uniform(0.05, 0.3)) * sr)
        else:
            n = max(int(round(duration * sr)), int(math.ceil(cycles[-1, 1] * sr)))
        with open(audio_dir / f"{stem}.txt", "w", newline="\n") as f:
            for (s, e), lab in zip(cycles, labels):
                f.write(f"{s:.3f}\t{e:.3f}\t{lab & 1}\t{lab >> 1}\n")
        split = "test" if p["pid"] in test_patients else "train"
        split_lines.append((stem, split))
        recs.append(_Recording(stem=stem, sr=sr, n=n, cycles=cycles, labels=labels,
                               device=device, child=child, subtype=SUBTYPES[i % 3]))

    # The split file's quirk: one entry names the wrong device (as 226_1b1_Pl_sc_Meditron).
    for j, (stem, split) in enumerate(split_lines):
        if stem.endswith("_LittC2SE"):
            split_lines[j] = (icbhi.split_key(stem) + "_Meditron", split)
            break
    with open(out / icbhi.SPLIT_FILE, "w", newline="") as f:
        f.writelines(f"{stem}\t{split}\r\n" for stem, split in split_lines)
    with open(out / icbhi.DEMOGRAPHICS_FILES[0], "w", newline="") as f:
        f.writelines(_demographics_line(p, rng) + "\r\n" for p in patients)
    with open(out / icbhi.DIAGNOSIS_FILE, "w", newline="\n") as f:
        f.writelines(f"{p['pid']}\t{p['diagnosis']}\n" for p in patients)
    return recs
