"""Recordings to 16 kHz cycles: load (mono, resampled), cut with fades, fit to a fixed length.

docs/method.md §2.1-2.3. Every function works on 1-D float32 numpy arrays; nothing here knows about
datasets or TF, so the TFDS builders and the tests share one definition of a cycle.

Two choices differ between the reference codes (docs/fidelity.md), each a config field:
- the resampler (`data.resampler`): 'torchaudio' is torchaudio's default windowed-sinc resampler
  (`torchaudio.transforms.Resample`: a Hann-windowed sinc over 6 zero crossings, cut-off at
  0.99 of the lower Nyquist frequency), the kernel every reference code ran, computed here as
  a polyphase matrix product; 'soxr' is libsoxr's HQ filter;
- where the fades go (`data.fade`): 'cycle' (the SCL code) fades every cycle in and out, so
  the repeats of a padded cycle meet at faded seams; 'recording' (Patch-Mix, PAFA) fades the
  recording at its two ends and cuts the cycles unfaded, so the repeats meet at hard seams.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import soundfile as sf
import soxr

from resp_jax.data import wav_checks
from resp_jax.data.records import DataError

SAMPLE_RATE = 16000  # Hz: every recording is resampled to it
PAD_MODES = ("circular", "zero")  # data.pad: how `fit` extends a short cycle
RESAMPLERS = ("torchaudio", "soxr")  # data.resampler
FADE_MODES = ("cycle", "recording")  # data.fade: what the fades of `cycles` apply to
RESAMPLER, FADE_MODE = "torchaudio", "cycle"  # the defaults (configs/base.py)
FADE = 1000  # samples: 1/16 s at 16 kHz (docs/method.md §2.2)
SINC_ZEROS = 6    # torchaudio's lowpass_filter_width: sinc zero crossings on each side
SINC_ROLLOFF = 0.99  # torchaudio's rolloff: the cut-off, a fraction of the lower Nyquist


def fade_length(sr: int) -> int:
    """The cycles' fade at ``sr`` Hz: 1/16 s (`FADE` samples at 16 kHz, 3000 at 48 kHz)."""
    return FADE * int(sr) // SAMPLE_RATE


def load(path, sr: int = SAMPLE_RATE, resampler: str = RESAMPLER) -> np.ndarray:
    """Reads a dataset recording as mono float32 at ``sr`` Hz (channels averaged, then
    `resample`d with ``resampler``).

    A missing, empty, truncated or non-WAV file raises `DataError` naming the file (the same
    header checks the readers make, `wav_checks.wav_info`).
    """
    path = os.fspath(path)
    wav_checks.wav_info(path)
    return _decode(path, sr, wav_checks.EXPECTED_WAV, resampler)


ANY_AUDIO = wav_checks.ANY_AUDIO


def load_any(path, sr: int = SAMPLE_RATE, resampler: str = RESAMPLER) -> np.ndarray:
    """Like `load` for a recording from outside the datasets: any format, sample rate, bit
    depth or channel count that soundfile reads; `DataError` naming the file otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, f"file not found; expected {ANY_AUDIO}")
    if os.path.getsize(path) == 0:  # libsndfile would only say "Format not recognised"
        raise DataError(path, f"empty file; expected {ANY_AUDIO}")
    return _decode(path, sr, ANY_AUDIO, resampler)


def _decode(path: str, sr: int, expected: str, resampler: str) -> np.ndarray:
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise DataError(path, f"unreadable audio ({e}); expected {expected}") from None
    if wave.shape[0] == 0:
        raise DataError(path, f"audio file without samples; expected {expected}")
    wave = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    return resample(wave, rate, sr, resampler)


def resample(wave: np.ndarray, rate: int, sr: int = SAMPLE_RATE,
             resampler: str = RESAMPLER) -> np.ndarray:
    """``wave`` sampled at ``rate`` Hz, resampled to ``sr`` Hz (unchanged when equal):
    'soxr' (libsoxr, HQ) or 'torchaudio' (`sinc_resample`)."""
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler {resampler!r}; expected one of {RESAMPLERS}")
    wave = np.asarray(wave, dtype=np.float32)
    if rate != sr:
        wave = soxr.resample(wave, rate, sr, quality="HQ") if resampler == "soxr" else \
            sinc_resample(wave, rate, sr)
    return np.ascontiguousarray(wave, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple:
    """(kernel float32 [new, 2 width + orig], width) for rates already divided by their gcd.

    Row j holds the weights of output phase j over input offsets -width .. width + orig - 1:
    h(base (k / orig - j / new)) x base / orig, with base = min(orig, new) x rolloff and
    h(t) = sinc(t) cos^2(pi t / (2 zeros)) for |t| <= zeros, 0 beyond (t clamped, as
    torchaudio does, where the window is 0). Computed in float64 from phases j / new rounded
    to float32 and kept as float32, as `torchaudio.transforms.Resample` computes and caches it:
    the same numbers.
    """
    base = min(orig, new) * SINC_ROLLOFF
    width = math.ceil(SINC_ZEROS * orig / base)
    offsets = np.arange(-width, width + orig, dtype=np.float64) / orig
    phases = (np.arange(new, dtype=np.float32) / np.float32(new)).astype(np.float64)
    t = np.clip((offsets[None, :] - phases[:, None]) * base, -SINC_ZEROS, SINC_ZEROS)
    kernel = np.sinc(t) * np.cos(t * np.pi / (2 * SINC_ZEROS)) ** 2 * (base / orig)
    return kernel.astype(np.float32), width


def sinc_resample(wave: np.ndarray, rate: int, sr: int) -> np.ndarray:
    """torchaudio's default resampler (`torchaudio.functional.resample`, sinc_interp_hann,
    lowpass_filter_width 6, rolloff 0.99) on a 1-D float32 wave.

    The rates are divided by their gcd (orig / new); output sample i x new + j is the dot
    product of phase j's kernel row with the input from i x orig - width on (zeros outside),
    all phases at once as one matrix product of the strided input windows with the kernel.
    The length is ceil(new x n / orig), evaluated in float32 as torchaudio does.
    """
    g = math.gcd(int(rate), int(sr))
    orig, new = int(rate) // g, int(sr) // g
    kernel, width = _sinc_kernel(orig, new)
    wave = np.asarray(wave, dtype=np.float32)
    n = len(wave)
    padded = np.concatenate([np.zeros(width, np.float32), wave,
                             np.zeros(width + orig, np.float32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    out = np.matmul(windows, kernel.T).reshape(-1)
    return out[:int(np.ceil(np.float32(new * n / orig)))]


def _ramp_in(n: int, fade: int) -> np.ndarray:
    """The first ``min(n, fade)`` gains of a linear 0 -> 1 ramp over ``fade`` samples."""
    return np.linspace(0.0, 1.0, fade, dtype=np.float32)[:n]


def _fade_ends(out: np.ndarray, fade: int) -> np.ndarray:
    """``out`` (modified) with the fade-in over its first and the fade-out over its last
    ``fade`` samples (a wave shorter than ``fade`` gets the matching parts of both ramps)."""
    if fade > 0 and len(out):
        k = min(len(out), fade)
        out[:k] *= _ramp_in(k, fade)
        out[len(out) - k:] *= _ramp_in(k, fade)[::-1]
    return out


def cut(wave: np.ndarray, start_s: float, end_s: float, sr: int = SAMPLE_RATE,
        fade: int = FADE) -> np.ndarray:
    """Samples ``[int(start_s * sr), int(end_s * sr))`` clamped to the audio, with linear fades.

    The fade-in ramps 0 -> 1 over the first ``fade`` samples and the fade-out 1 -> 0 over the
    last ``fade`` (a cycle shorter than ``fade`` gets the matching parts of both ramps);
    ``fade=0`` cuts without fades.
    """
    n_total = len(wave)
    a = min(int(start_s * sr), n_total)
    b = min(int(end_s * sr), n_total)
    return _fade_ends(np.array(wave[a:max(a, b)], dtype=np.float32), fade)


def cycles(wave: np.ndarray, spans, fade_mode: str = FADE_MODE, sr: int = SAMPLE_RATE,
           fade: int = FADE) -> list:
    """The cycles ``spans`` ((start_s, end_s), ...) of one recording ``wave``, each `cut`.

    'cycle' (the SCL code) fades every cycle in and out over ``fade`` samples; 'recording'
    (Patch-Mix, PAFA) fades the recording in and out over its first and last ``fade`` samples
    and cuts the cycles without fades, so only a cycle at an end of the recording has one.
    """
    if fade_mode not in FADE_MODES:
        raise ValueError(f"fade mode {fade_mode!r}; expected one of {FADE_MODES}")
    if fade_mode == "recording":
        wave, fade = _fade_ends(np.array(wave, dtype=np.float32), fade), 0
    return [cut(wave, a, b, sr, fade) for a, b in spans]


def fit(wave: np.ndarray, n: int, mode: str = "circular", fade: int = FADE) -> np.ndarray:
    """Makes a cycle exactly ``n`` samples long (docs/method.md §2.3).

    Longer: the first ``n`` samples. Shorter or exactly ``n``: 'circular' repeats it, crops to
    ``n`` and fades out the last ``fade`` samples (a cycle of exactly ``n`` samples too, as the
    reference codes' ``> n`` test leaves it to their repeat branch); 'zero' centres it in zeros
    (the extra zero on the right).
    The repeats meet as the cycle was cut (`cycles`): at faded seams ('cycle' fades) or hard
    ones ('recording' fades, PAFA's and Patch-Mix's padding).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r}; expected one of {PAD_MODES}")
    if len(wave) > n:
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
