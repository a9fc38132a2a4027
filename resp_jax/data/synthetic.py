"""Synthetic ICBHI 2017 and SPRSound datasets, written in the real distributed layouts.

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
  own sample rate (ICBHI: 4, 10 or 44.1 kHz; SPRSound 8 kHz), with 16-, 24- or 32-bit PCM;
- labels depend on the patient's diagnosis and age group (and so correlate with sex and age).

    python -m resp_jax.data.synthetic --dataset=icbhi --out=/tmp/icbhi_syn [--recordings=48]
    python -m resp_jax.data.synthetic --dataset=icbhi --out=/tmp/icbhi_full \\
        --from_annotations=../shared/data/icbhi2017     # a wav for each real annotation file

Every recording has its own random stream derived from (seed, stem), so the output is a pure
function of the arguments, whatever the number of worker processes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.fft
import soundfile as sf
from absl import logging

from resp_jax.data import icbhi, readers, records

CACHE_DIR = "~/.cache/resp_jax/synthetic"
CACHE_VERSION = "v2"   # bump when the generator's output changes
_COMPLETE = ".complete"
DEFAULT_RECORDINGS = {records.ICBHI: 48, records.SPRSOUND: 60}
# The main job's default dataset (default_dataset): large enough (~1300 ICBHI cycles) that the
# demo's contrastive pretraining has something to learn from, small enough to make in seconds.
DEFAULT_DATASET_RECORDINGS = {records.ICBHI: 160, records.SPRSOUND: 60}
SUBTYPES = ("PCM_16", "PCM_24", "PCM_32")
SPRSOUND_RATE = 8000

# --------------------------------------------------------------------------------------------
# Sound synthesis


@dataclasses.dataclass(frozen=True)
class Device:
    """A recording chain: frequency response, hiss and mains hum levels."""
    lowpass: float       # Hz, corner of the roll-off
    order: float         # roll-off steepness (x 6 dB/octave)
    highpass: float      # Hz
    resonance: float     # Hz of a mild bump (0 for none)
    hiss: float          # white noise floor relative to breath RMS
    hum: float           # 50 Hz hum (with odd harmonics) relative to breath RMS

    def gain(self, f: np.ndarray) -> np.ndarray:
        f = np.maximum(np.asarray(f, dtype=np.float32), 1.0)
        g = 1.0 / np.sqrt(1.0 + (f / self.lowpass) ** (2 * self.order))
        g = g / np.sqrt(1.0 + (self.highpass / f) ** 4)
        if self.resonance:
            g = g * (1.0 + 0.8 * np.exp(-0.5 * (np.log(f / self.resonance) / 0.25) ** 2))
        return g.astype(np.float32)


DEVICES = {
    "AKGC417L": Device(lowpass=3000.0, order=1.0, highpass=60.0, resonance=0.0, hiss=0.01,
                       hum=0.0),
    "Meditron": Device(lowpass=1200.0, order=2.0, highpass=40.0, resonance=250.0, hiss=0.02,
                       hum=0.05),
    "LittC2SE": Device(lowpass=700.0, order=1.0, highpass=30.0, resonance=120.0, hiss=0.005,
                       hum=0.0),
    "Litt3200": Device(lowpass=1500.0, order=2.0, highpass=20.0, resonance=0.0, hiss=0.04,
                       hum=0.02),
    "Yunting": Device(lowpass=1800.0, order=1.5, highpass=50.0, resonance=300.0, hiss=0.015,
                      hum=0.0),  # SPRSound's stethoscope
}


@dataclasses.dataclass(frozen=True)
class Sound:
    """The adventitious sounds of one cycle."""
    crackle: Optional[str] = None   # 'fine' | 'coarse'
    tone: Optional[str] = None      # 'wheeze' | 'rhonchi' | 'stridor'
    distract: bool = False          # a stray click or faint short tone (normal cycles)


_TONES = {  # f0 range (Hz), harmonic amplitudes, where in the cycle (fraction), level range
    "wheeze": ((180.0, 1000.0), (1.0, 0.45, 0.2), (0.35, 0.95), (0.15, 1.0)),
    "rhonchi": ((100.0, 220.0), (1.0, 0.8, 0.6, 0.45, 0.3), (0.35, 1.0), (0.15, 0.8)),
    "stridor": ((500.0, 1000.0), (1.0, 0.6, 0.3), (0.0, 0.4), (0.4, 1.5)),
}
_CRACKLES = {  # count range per second, decay (ms), frequency (Hz), peak level range
    "fine": ((4.0, 12.0), (0.4, 1.2), (700.0, 1800.0), (2.5, 10.0)),
    "coarse": ((2.0, 6.0), (2.0, 5.0), (150.0, 450.0), (2.5, 10.0)),
}


def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _breath_noise(n: int, sr: int, device: Device, brightness: float, rng) -> np.ndarray:
    """Unit-RMS Gaussian noise with a breath-sound spectrum coloured by the device."""
    nfft = scipy.fft.next_fast_len(n, real=True)
    m = nfft // 2 + 1
    f = np.fft.rfftfreq(nfft, 1.0 / sr).astype(np.float32)
    fc = 450.0 * brightness
    shape = 1.0 / np.sqrt(1.0 + (f / fc) ** 4) / np.sqrt(1.0 + (80.0 / np.maximum(f, 1.0)) ** 4)
    spec = np.empty(m, np.complex64)
    spec.real = rng.standard_normal(m, dtype=np.float32)
    spec.imag = rng.standard_normal(m, dtype=np.float32)
    spec *= shape * device.gain(f)
    x = scipy.fft.irfft(spec, nfft)[:n]
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def _envelope(n: int, sr: int, cycles: np.ndarray, rng) -> np.ndarray:
    """Breathing loudness: inspiration (first ~40 %) louder than expiration, quiet between."""
    env = np.full(n, 0.15, dtype=np.float32)
    for start, end in cycles:
        a, b = int(start * sr), min(int(end * sr), n)
        if b <= a:
            continue
        phase = np.arange(b - a, dtype=np.float32) / (b - a)
        split = rng.uniform(0.3, 0.5)
        insp = np.sin(np.pi * np.minimum(phase / split, 1.0)) ** 2
        exp_ = 0.6 * np.sin(np.pi * np.clip((phase - split) / (1 - split), 0.0, 1.0)) ** 2
        env[a:b] = 0.15 + 0.85 * np.where(phase < split, insp, exp_) * rng.uniform(0.7, 1.0)
    return env


def _add_transients(x, sr, times, amps, decays, freqs, rng) -> None:
    """Adds damped sinusoids (one per time) in place, vectorised over all of them."""
    if len(times) == 0:
        return
    length = int(math.ceil(6 * float(np.max(decays)) * sr)) + 1
    t = np.arange(length, dtype=np.float32) / sr
    phase = rng.uniform(0, 2 * np.pi, len(times)).astype(np.float32)
    kern = (amps[:, None] * np.exp(-t[None, :] / decays[:, None])
            * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phase[:, None])).astype(np.float32)
    idx = (np.asarray(times) * sr).astype(np.int64)[:, None] + np.arange(length)[None, :]
    ok = idx < len(x)
    np.add.at(x, idx[ok], kern[ok])


def _tone(x, sr, a, b, f0, harmonics, level, device, rng) -> None:
    """Adds a tonal component with harmonics and a slow pitch drift on samples [a, b)."""
    n = b - a
    if n <= 8:
        return
    t = np.arange(n, dtype=np.float32) / sr
    drift = 1.0 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3)
    vib = 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 8) * t + rng.uniform(0, 2 * np.pi))
    f = f0 * drift * vib
    phase = 2 * np.pi * np.cumsum(f) / sr
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03).astype(np.float32)
    seg = np.zeros(n, dtype=np.float32)
    for h, amp in enumerate(harmonics, start=1):
        if h * f0 * 1.2 >= 0.45 * sr:
            break
        seg += amp * float(device.gain(h * f0)) * np.sin(h * phase).astype(np.float32)
    x[a:b] += level * fade * seg


def render(n: int, sr: int, cycles: np.ndarray, sounds: list, device: str, child: bool,
           rng) -> np.ndarray:
    """A recording of ``n`` samples at ``sr`` Hz: breath cycles ``[(start, end)]`` in seconds,
    each with its `Sound`; returns float32 in [-1, 1)."""
    dev = DEVICES[device]
    cycles = np.asarray(cycles, dtype=np.float64).reshape(-1, 2)
    brightness = rng.uniform(1.2, 1.6) if child else rng.uniform(0.8, 1.15)
    env = _envelope(n, sr, cycles, rng)
    x = _breath_noise(n, sr, dev, brightness, rng) * env
    dur = n / sr

    # Heart: two low thumps per beat, all through the recording.
    beat = 60.0 / (rng.uniform(90, 130) if child else rng.uniform(55, 85))
    beats = np.arange(rng.uniform(0, beat), dur, beat)
    thumps = np.concatenate([beats, beats + 0.3 * beat])
    _add_transients(x, sr, thumps, np.full(len(thumps), 0.6 * rng.uniform(0.3, 1.0), np.float32),
                    np.full(len(thumps), 0.015, np.float32),
                    rng.uniform(35, 70, len(thumps)).astype(np.float32), rng)

    times, amps, decays, freqs = [], [], [], []
    for (start, end), snd in zip(cycles, sounds):
        length = end - start
        if snd.crackle:
            rate, decay, freq, level = _CRACKLES[snd.crackle]
            k = max(2, rng.poisson(rng.uniform(*rate) * length))
            times.append(start + rng.uniform(0.05, 0.95, k) * length)
            amps.append(_loguniform(rng, *level) * rng.uniform(0.5, 1.0, k)
                        * rng.choice([-1.0, 1.0], k))
            decays.append(rng.uniform(*decay, k) / 1000.0)
            freqs.append(np.minimum(rng.uniform(*freq, k), 0.4 * sr))
        if snd.tone:
            f0_range, harm, where, level = _TONES[snd.tone]
            f0 = min(_loguniform(rng, *f0_range), 0.35 * sr)
            lo = rng.uniform(where[0], where[0] + 0.1)
            hi = rng.uniform(max(where[1] - 0.15, lo + 0.15), where[1])
            _tone(x, sr, int((start + lo * length) * sr), min(int((start + hi * length) * sr), n),
                  f0, harm, _loguniform(rng, *level), dev, rng)
        if snd.distract:
            if rng.random() < 0.5:
                times.append(start + rng.uniform(0.1, 0.9, 1) * length)
                amps.append(rng.uniform(0.5, 1.2, 1))
                decays.append(rng.uniform(0.5, 3.0, 1) / 1000.0)
                freqs.append(np.minimum(rng.uniform(200, 1500, 1), 0.4 * sr))
            else:
                a = start + rng.uniform(0.1, 0.7) * length
                _tone(x, sr, int(a * sr), min(int((a + 0.12) * sr), n),
                      min(rng.uniform(150, 900), 0.35 * sr), (1.0,), rng.uniform(0.05, 0.12),
                      dev, rng)
    if times:
        f = np.concatenate(freqs).astype(np.float32)
        amps = np.concatenate(amps).astype(np.float32) * DEVICES[device].gain(f)
        _add_transients(x, sr, np.concatenate(times), amps,
                        np.concatenate(decays).astype(np.float32), f, rng)

    if dev.hum:
        t = np.arange(n, dtype=np.float32) / sr
        x += dev.hum * (np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t))
    x += dev.hiss * rng.standard_normal(n, dtype=np.float32)
    peak = float(np.max(np.abs(x))) or 1.0
    return (x * (rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def _rng(seed: int, stem: str):
    return np.random.default_rng([seed, zlib.crc32(stem.encode())])


def _write_wav(path: Path, wave: np.ndarray, sr: int, subtype: str) -> None:
    sf.write(str(path), wave, sr, subtype=subtype, format="WAV")


def _fresh(out) -> Path:
    """``out`` as a Path, refusing a non-empty folder: old files would mix into the dataset."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; expected a new or empty folder to write "
                              "the synthetic dataset into")
    return out


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


def _icbhi_sounds(labels, child: bool, rng) -> list:
    coarse_bias = 0.3 if child else 0.6
    out = []
    for label in labels:
        crackle = (("coarse" if rng.random() < coarse_bias else "fine")
                   if label in (1, 3) else None)
        tone = "wheeze" if label in (2, 3) else None
        out.append(Sound(crackle=crackle, tone=tone,
                         distract=(label == 0 and rng.random() < 0.15)))
    return out


@dataclasses.dataclass
class _Recording:
    """What a worker needs to render and write one wav."""
    stem: str
    sr: int
    n: int
    cycles: np.ndarray       # [k, 2] seconds
    device: str
    child: bool
    subtype: str
    labels: Optional[list] = None   # ICBHI labels (sounds drawn from the recording's stream)
    sounds: Optional[list] = None   # or the `Sound` of each cycle


def _render_one(rec: _Recording, seed: int, folder: str) -> None:
    rng = _rng(seed, rec.stem)
    sounds = rec.sounds if rec.sounds is not None else _icbhi_sounds(rec.labels, rec.child, rng)
    wave = render(rec.n, rec.sr, rec.cycles, sounds, rec.device, rec.child, rng)
    _write_wav(Path(folder) / f"{rec.stem}.wav", wave, rec.sr, rec.subtype)


def _render_all(recs: list, seed: int, folder: Path, workers: int) -> None:
    if workers <= 1 or len(recs) < 2:
        for r in recs:
            _render_one(r, seed, str(folder))
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_render_one, recs, [seed] * len(recs), [str(folder)] * len(recs),
                      chunksize=max(1, len(recs) // (8 * workers))))


def _breath_cycles(duration: float, child: bool, rng) -> np.ndarray:
    """Consecutive breath cycles from near 0 to ``duration`` s (the last may run past it)."""
    mean = 1.9 if child else 2.7
    t = rng.uniform(0.02, 0.6)
    out = []
    while t < duration - 0.5:
        d = float(np.clip(rng.normal(mean, 0.25 * mean), 0.8, 6.0))
        out.append((round(t, 3), round(t + d, 3)))
        t += d + (rng.uniform(0.0, 0.3) if rng.random() < 0.3 else 0.0)
    return np.asarray(out).reshape(-1, 2)


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


def write_icbhi(out, *, recordings: int = DEFAULT_RECORDINGS[records.ICBHI], seed: int = 0,
                from_annotations=None, workers: int = 1) -> Path:
    """Writes a synthetic ICBHI 2017 root (SPEC 1.1 layout) into ``out``; returns ``out``.

    With ``from_annotations`` (an ICBHI root), writes one wav for each of its annotation
    files, long enough for its cycles, and copies its annotation and metadata files instead.
    """
    if from_annotations is None and recordings < 2:
        raise ValueError(f"recordings={recordings}; expected at least 2 (one per split)")
    out = _fresh(out)
    audio_dir = out / icbhi.AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)
    if from_annotations is not None:
        recs = _icbhi_from_annotations(Path(from_annotations), out, audio_dir)
    else:
        recs = _icbhi_generate(out, audio_dir, recordings, seed)
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


def _icbhi_generate(out: Path, audio_dir: Path, recordings: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    n_patients = max(2, min(recordings, round(recordings / 3)))
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
            # A cycle past the end of the audio (SPEC 1.1): the file stops before it ends.
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
# Event class probabilities (records.SPRSOUND_CLASSES order) for babies (< 5) and kids.
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


def write_sprsound(out, *, recordings: int = DEFAULT_RECORDINGS[records.SPRSOUND],
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
    patients = []
    for i in range(n_patients):
        digits = 7 + i % 3                                 # ids of 7 to 9 digits
        pid = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
        age = round(float(rng.uniform(0.1, 4.9) if i % 2 else rng.uniform(5.0, 17.9)), 1)
        patients.append(dict(pid=pid, age=age, gender=int(rng.integers(0, 2)),
                             inter=i < n_inter))
    classes = records.SPRSOUND_CLASSES
    by_split: dict = {s: [] for s in dirs}
    rec_no = int(rng.integers(1, 500))
    for i in range(recordings):
        p = patients[i % n_patients]
        if p["inter"]:
            split = "inter_test"
        else:
            split = "intra_test" if (i // n_patients) % 4 == 1 else "train"
        rec_no += int(rng.integers(1, 40))
        stem = f"{p['pid']}_{p['age']:.1f}_{p['gender']}_p{1 + i % 4}_{rec_no}"
        child = p["age"] < 5.0
        duration = float(rng.uniform(8.0, 15.0))
        cycles = _breath_cycles(duration, True, rng)
        cycles = cycles[cycles[:, 1] <= duration]
        probs = np.asarray(_SPR_P["baby" if child else "kid"])
        names = [classes[int(k)] for k in rng.choice(len(classes), len(cycles), p=probs)]
        annotated = rng.random(len(cycles)) < 0.9   # a few breaths are left unannotated
        poor = i == recordings - 1 and recordings >= 10   # one poor-quality recording
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
        wav_dir, json_dir = dirs[split]
        (json_dir / f"{stem}.json").write_text(json.dumps(doc))
        by_split[split].append(_Recording(
            stem=stem, sr=SPRSOUND_RATE, n=int(round(duration * SPRSOUND_RATE)), cycles=cycles,
            sounds=sounds, device="Yunting", child=child, subtype="PCM_16"))
    for split, recs in by_split.items():
        _render_all(recs, seed, dirs[split][0], workers)
    return out


# --------------------------------------------------------------------------------------------
# The default dataset


def write(dataset: str, out, **kw) -> Path:
    if dataset == records.ICBHI:
        return write_icbhi(out, **kw)
    if dataset == records.SPRSOUND:
        if kw.pop("from_annotations", None) is not None:
            raise ValueError("from_annotations is for ICBHI roots only")
        return write_sprsound(out, **kw)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {records.DATASETS}")


def default_dataset(dataset: str, cache_dir=None) -> Path:
    """The small synthetic dataset used when no data root is given: made once, then reused.

    It lives in ``<cache_dir>/<dataset>-<CACHE_VERSION>`` (``cache_dir`` defaults to
    ~/.cache/resp_jax/synthetic) and is written to a temporary folder, checked with the
    reader, then renamed into place, so a crash or a concurrent run never leaves half of one.
    """
    if dataset not in records.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {records.DATASETS}")
    parent = Path(os.path.expanduser(str(cache_dir or CACHE_DIR)))
    target = parent / f"{dataset}-{CACHE_VERSION}"
    if not (target / _COMPLETE).is_file():
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
        tmp.chmod(0o755)   # mkdtemp makes it private; the cache is an ordinary folder
        try:
            write(dataset, tmp, recordings=DEFAULT_DATASET_RECORDINGS[dataset], seed=0)
            readers.read(dataset, tmp)   # never cache something the reader rejects
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


def main(argv) -> None:
    from absl import flags
    del argv
    f = flags.FLAGS
    start = time.time()
    kw = dict(seed=f.seed, workers=f.workers)
    if f.recordings is not None:
        kw["recordings"] = f.recordings
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
    flags.DEFINE_integer("seed", 0, "Random seed; the output is a pure function of it.")
    flags.DEFINE_integer("workers", 1, "Processes rendering audio (the output does not "
                         "depend on it).")
    flags.mark_flags_as_required(["dataset", "out"])


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
