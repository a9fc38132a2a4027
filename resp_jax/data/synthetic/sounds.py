"""Sounds of the synthetic datasets: breath noise, crackles, wheezes, device colouring,
and the rendering and writing of recordings shared by the ICBHI and SPRSound writers."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.fft
import soundfile as sf

CACHE_DIR = "~/.cache/resp_jax/synthetic"
CACHE_VERSION = "v2"   # bump when the generator's output changes
_COMPLETE = ".complete"
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
