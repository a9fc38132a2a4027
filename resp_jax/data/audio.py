"""Recordings to 16 kHz cycles: load (mono, resampled), cut with fades, fit to a fixed length.

docs/method.md §2.1-2.3. Every function works on 1-D float32 numpy arrays; nothing here knows about
datasets or TF, so the TFDS builders and the tests share one definition of a cycle.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from resp_jax.data import wav_checks
from resp_jax.data.records import DataError

SAMPLE_RATE = 16000  # Hz: every recording is resampled to it
PAD_MODES = ("circular", "zero")  # data.pad: how `fit` extends a short cycle
FADE = 1000  # samples: 1/16 s at 16 kHz (docs/method.md §2.2)


def fade_length(sr: int) -> int:
    """The cycles' fade at ``sr`` Hz: 1/16 s (`FADE` samples at 16 kHz, 3000 at 48 kHz)."""
    return FADE * int(sr) // SAMPLE_RATE


def load(path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Reads a dataset recording as mono float32 at ``sr`` Hz (channels averaged, soxr HQ).

    A missing, empty, truncated or non-WAV file raises `DataError` naming the file (the same
    header checks the readers make, `wav_checks.wav_info`).
    """
    path = os.fspath(path)
    wav_checks.wav_info(path)
    return _decode(path, sr, wav_checks.EXPECTED_WAV)


ANY_AUDIO = wav_checks.ANY_AUDIO


def load_any(path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Like `load` for a recording from outside the datasets: any format, sample rate, bit
    depth or channel count that soundfile reads; `DataError` naming the file otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, f"file not found; expected {ANY_AUDIO}")
    if os.path.getsize(path) == 0:  # libsndfile would only say "Format not recognised"
        raise DataError(path, f"empty file; expected {ANY_AUDIO}")
    return _decode(path, sr, ANY_AUDIO)


def _decode(path: str, sr: int, expected: str) -> np.ndarray:
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise DataError(path, f"unreadable audio ({e}); expected {expected}") from None
    if wave.shape[0] == 0:
        raise DataError(path, f"audio file without samples; expected {expected}")
    wave = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    if rate != sr:
        wave = soxr.resample(wave, rate, sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _ramp_in(n: int, fade: int) -> np.ndarray:
    """The first ``min(n, fade)`` gains of a linear 0 -> 1 ramp over ``fade`` samples."""
    return np.linspace(0.0, 1.0, fade, dtype=np.float32)[:n]


def cut(wave: np.ndarray, start_s: float, end_s: float, sr: int = SAMPLE_RATE,
        fade: int = FADE) -> np.ndarray:
    """Samples ``[int(start_s * sr), int(end_s * sr))`` clamped to the audio, with linear fades.

    The fade-in ramps 0 -> 1 over the first ``fade`` samples and the fade-out 1 -> 0 over the
    last ``fade`` (a cycle shorter than ``fade`` gets the matching parts of both ramps).
    """
    n_total = len(wave)
    a = min(int(start_s * sr), n_total)
    b = min(int(end_s * sr), n_total)
    out = np.array(wave[a:max(a, b)], dtype=np.float32)
    if fade > 0 and len(out):
        k = min(len(out), fade)
        out[:k] *= _ramp_in(k, fade)
        out[len(out) - k:] *= _ramp_in(k, fade)[::-1]
    return out


def fit(wave: np.ndarray, n: int, mode: str = "circular", fade: int = FADE) -> np.ndarray:
    """Makes a cycle exactly ``n`` samples long (docs/method.md §2.3).

    Longer: the first ``n`` samples. Shorter: 'circular' repeats it, crops to ``n`` and fades
    out the last ``fade`` samples; 'zero' centres it in zeros (the extra zero on the right).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r}; expected one of {PAD_MODES}")
    if len(wave) >= n:
        return np.array(wave[:n])
    if len(wave) == 0:
        raise ValueError("cannot fit an empty cycle")
    if mode == "zero":
        out = np.zeros(n, np.float32)
        left = (n - len(wave)) // 2
        out[left:left + len(wave)] = wave
        return out
    out = np.tile(wave, -(-n // len(wave)))[:n]
    if fade > 0:
        k = min(n, fade)
        out[n - k:] *= _ramp_in(k, fade)[::-1]
    return out
