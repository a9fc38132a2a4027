"""The log-mel spectrogram of docs/method.md §2.4, in numpy/librosa (reference) and TF (pipeline).

n_fft 1024, periodic Hann window of 1024, hop 512, centred frames with reflect padding,
power 2, 64 HTK mel bands 50-2000 Hz without area normalisation, 10*log10(max(x, 1e-10)).
Output is [..., 64 mel, T] with T = 1 + n // 512 (8 s at 16 kHz: 251 frames).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

from resp_jax.data import htsat_frontends
from resp_jax.data.audio import SAMPLE_RATE

N_FFT = 1024
HOP = 512
N_MELS = 64
FMIN = 50.0
FMAX = 2000.0
AMIN = 1e-10


@functools.lru_cache(maxsize=None)
def _filterbank64() -> np.ndarray:
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX,
                             htk=True, norm=None, dtype=np.float64)
    fb.setflags(write=False)
    return fb


def mel_filterbank() -> np.ndarray:
    """[64, 513] float64 HTK mel weights (librosa, norm=None)."""
    return _filterbank64().copy()


def num_frames(n_samples: int) -> int:
    """Frames of a centred STFT of ``n_samples`` (8 s at 16 kHz -> 251)."""
    return 1 + n_samples // HOP


def logmel_np(wave: np.ndarray) -> np.ndarray:
    """Reference log-mel of ``wave`` [..., n] via librosa, in float64: [..., 64, T]."""
    mel = librosa.feature.melspectrogram(
        y=np.asarray(wave, np.float64), sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP,
        win_length=N_FFT, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=True, norm=None)
    return 10.0 * np.log10(np.maximum(mel, AMIN))


def _used_bins() -> int:
    """FFT bins up to the last one with a nonzero mel weight (the rest multiply by 0)."""
    nonzero = np.nonzero(_filterbank64().any(axis=0))[0]
    return int(nonzero[-1]) + 1


def _logmel_graph(waves, dtype):
    import tensorflow as tf

    x = tf.cast(waves, dtype)
    x = tf.pad(x, [[0, 0], [N_FFT // 2, N_FFT // 2]], mode="REFLECT")
    spec = tf.signal.stft(x, frame_length=N_FFT, frame_step=HOP, fft_length=N_FFT,
                          window_fn=functools.partial(tf.signal.hann_window, periodic=True),
                          pad_end=False)  # [B, T, 513]
    bins = _used_bins()
    spec = spec[..., :bins]
    power = tf.math.square(tf.math.real(spec)) + tf.math.square(tf.math.imag(spec))
    fb = tf.constant(_filterbank64()[:, :bins].T, dtype)  # [bins, 64]
    mel = tf.einsum("btf,fm->bmt", power, fb)
    db = (10.0 / np.log(10.0)) * tf.math.log(tf.math.maximum(mel, tf.constant(AMIN, dtype)))
    return tf.cast(db, tf.float32)


@functools.lru_cache(maxsize=None)
def _compiled(dtype: str):
    import tensorflow as tf

    return tf.function(functools.partial(_logmel_graph, dtype=tf.as_dtype(dtype)),
                       input_signature=[tf.TensorSpec([None, None], tf.float32)])


def logmel_tf(waves, dtype: str = "float64"):
    """Log-mel of a batch ``waves`` [B, n] float32 (n > 512) as a float32 TF tensor [B, 64, T].

    The STFT and mel sum run in ``dtype``: float64 by default, because TF's float32 FFT
    moves quiet mel bins (~100 dB below a frame's loudest) by up to ~0.08 dB, while float64
    stays within 0.01 dB of librosa (see tests/test_features.py). Padding is the plain
    reflection of the whole signal; librosa reflects the last 512 samples on their own when
    n is a multiple of 512, which changes one sample of the last frame (window weight ~1e-5).
    """
    import tensorflow as tf

    return _compiled(dtype)(tf.convert_to_tensor(waves, tf.float32))


# ----------------------------------------------------------------------------------------------
# Kaldi fbank: the AST front end (docs/method.md §9).
#
# Why a second front end: AST was pretrained on AudioSet with torchaudio.compliance.kaldi.fbank
# features, so fine-tuning it needs the same numbers. This is a numpy re-implementation with
# AST's arguments (htk_compat=True, window_type='hanning', dither 0, frame_shift 10 ms,
# frame_length 25 ms, use_energy False, 128 mel bins) and Kaldi's defaults for the rest, so
# torchaudio stays out of the product.

AUDIOSET_MEAN = -4.2677393  # AST's AudioSet fbank statistics (its dataloader and the HF hub)
AUDIOSET_STD = 4.5689974
KALDI_FRAME_LENGTH = 400  # 25 ms at 16 kHz
KALDI_FRAME_SHIFT = 160  # 10 ms at 16 kHz
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_FREQ = 20.0
KALDI_EPSILON = float(np.finfo(np.float32).eps)  # torch.finfo(torch.float).eps, the log floor


def kaldi_num_frames(n_samples: int) -> int:
    """Frames of Kaldi's snip-edges framing: 1 + (n - 400) // 160 (8 s at 16 kHz -> 798)."""
    if n_samples < KALDI_FRAME_LENGTH:
        return 0
    return 1 + (n_samples - KALDI_FRAME_LENGTH) // KALDI_FRAME_SHIFT


def _kaldi_mel(freq):
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def _kaldi_banks(num_mel_bins: int, fft_size: int, sample_rate: int) -> np.ndarray:
    """[fft_size // 2 + 1, bins] float64 Kaldi mel filters (torchaudio's get_mel_banks).

    Triangles are linear in Kaldi's mel scale 1127 ln(1 + f / 700), evenly spaced between
    20 Hz and Nyquist, evaluated at the FFT bin frequencies k * sr / fft_size for k < fft_size / 2;
    the Nyquist bin gets no weight. No area normalisation.
    """
    half = fft_size // 2
    low, high = _kaldi_mel(KALDI_LOW_FREQ), _kaldi_mel(sample_rate / 2.0)
    delta = (high - low) / (num_mel_bins + 1)
    left = low + delta * np.arange(num_mel_bins)[:, None]
    centre, right = left + delta, left + 2.0 * delta
    mel = _kaldi_mel(np.arange(half) * (sample_rate / fft_size))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))  # [bins, half]
    banks = np.concatenate([banks, np.zeros((num_mel_bins, 1))], axis=1).T
    banks.setflags(write=False)
    return banks


KALDI_WINDOWS = ("hanning", "povey")  # AST's window | Kaldi's default (BEATs)


def _kaldi_window(window: str) -> np.ndarray:
    """torchaudio's symmetric 'hanning' window of 400 samples, or 'povey' (its 0.85th power)."""
    if window not in KALDI_WINDOWS:
        raise ValueError(f"window must be one of {KALDI_WINDOWS}, got {window!r}")
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(KALDI_FRAME_LENGTH)
                              / (KALDI_FRAME_LENGTH - 1))
    return hann if window == "hanning" else hann ** 0.85


def kaldi_fbank(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 128,
                *, remove_mean: bool = True, window: str = "hanning") -> np.ndarray:
    """Log mel filterbank ``[frames, num_mel_bins]`` float32 of a mono ``waveform`` [n].

    The numbers of ``torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=sr,
    use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``:
    frames of 25 ms every 10 ms, only whole frames (snip_edges: 1 + (n - 400) // 160, so 8 s
    gives 798); per frame the DC offset removed, pre-emphasis 0.97 (the first sample against
    itself), a symmetric Hann window ('hanning': 0.5 - 0.5 cos(2 pi i / 399)), zero-padded to a
    512-point FFT, power spectrum, Kaldi mel filters 20 Hz - Nyquist, natural log floored at
    float32 epsilon. Computed in float64, returned as float32.

    ``remove_mean``: first subtract the waveform's mean, as AST's dataloader (_wav2fbank in
    YuanGongND/ast src/dataloader.py) does before calling fbank. This function does it (the
    pipeline must not do it again); Hugging Face's ASTFeatureExtractor and Patch-Mix CL's
    generate_fbank do not, so pass False to reproduce them. The scale of ``waveform`` matters
    (log of power): AST and AUDIOSET_MEAN / AUDIOSET_STD assume float samples in [-1, 1].
    Normalise with :func:`normalise_fbank`; cutting or padding to the clip's frame count is
    the caller's.

    ``window='povey'`` (Kaldi's and torchaudio's default, the Hann window to the power 0.85)
    gives BEATs' fbank (BEATs.py ``preprocess``: ``kaldi.fbank(w, num_mel_bins=128,
    sample_frequency=16000, frame_length=25, frame_shift=10)``, whose other defaults are the
    ones above; docs/method.md §10); BEATs does not subtract the waveform's mean.
    """
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform [n], got shape {x.shape}")
    frames = kaldi_num_frames(x.shape[0])
    if frames == 0:
        raise ValueError(f"kaldi_fbank needs at least {KALDI_FRAME_LENGTH} samples "
                         f"(one 25 ms frame), got {x.shape[0]}")
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"kaldi_fbank's frame sizes are for {SAMPLE_RATE} Hz, got {sample_rate}")
    if remove_mean:
        x = x - x.mean()
    starts = np.arange(frames) * KALDI_FRAME_SHIFT
    strided = x[starts[:, None] + np.arange(KALDI_FRAME_LENGTH)[None, :]]
    strided = strided - strided.mean(axis=1, keepdims=True)
    previous = np.concatenate([strided[:, :1], strided[:, :-1]], axis=1)
    strided = strided - KALDI_PREEMPHASIS * previous
    window = _kaldi_window(window)
    fft_size = 1 << (KALDI_FRAME_LENGTH - 1).bit_length()  # 512
    spectrum = np.fft.rfft(strided * window, n=fft_size, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = power @ _kaldi_banks(num_mel_bins, fft_size, sample_rate)
    return np.log(np.maximum(mel, KALDI_EPSILON)).astype(np.float32)


def normalise_fbank(x, frontend: str = "fbank"):
    """(x - mean) / (2 * std) with the statistics of ``frontend``: AST's AudioSet ones
    ('fbank') or BEATs' ('beats'), as both models' own code normalises."""
    mean, std = fbank_norm(frontend)
    return (x - mean) / std


# BEATs' fbank statistics (BEATs.py preprocess defaults; docs/method.md §10).
BEATS_MEAN = 15.41663
BEATS_STD = 6.55582

# ----------------------------------------------------------------------------------------------
# The front ends a run chooses from (data.frontend).

FRONTENDS = ("logmel", "fbank", "beats") + htsat_frontends.FRONTENDS
# CNN6's log-mel (the paper) | AST's Kaldi fbank | BEATs' Kaldi fbank (docs/method.md §10) |
# CLAP's and OPERA-CT's log-mels (HTS-AT, §12; `resp_jax.data.htsat_frontends`)
FBANK_BINS = 128
# The Kaldi fbank front ends: window, waveform-mean removal, normalisation (mean, std).
FBANK_FRONTENDS = {"fbank": ("hanning", True, AUDIOSET_MEAN, AUDIOSET_STD),
                   "beats": ("povey", False, BEATS_MEAN, BEATS_STD)}


def sample_rate(frontend: str) -> int:
    """The rate (Hz) a front end's clips must have: 48 kHz for CLAP, else 16 kHz."""
    return htsat_frontends.RATES.get(frontend, SAMPLE_RATE)


def fixed_norm(frontend: str) -> tuple[float, float] | None:
    """(mean, scale) of a front end normalised with fixed constants and never min-maxed (the
    Kaldi fbanks: `fbank_norm`; CLAP's and OPERA's log-mels: (0, 1), their model normalises),
    or None (CNN6's log-mel: batch min-max, then standardised)."""
    if frontend in htsat_frontends.FRONTENDS:
        return 0.0, 1.0
    return fbank_norm(frontend) if frontend in FBANK_FRONTENDS else None


def fbank_norm(frontend: str) -> tuple[float, float]:
    """(mean, 2 x std): the fixed normalisation of a Kaldi fbank front end."""
    if frontend not in FBANK_FRONTENDS:
        raise ValueError(f"{frontend!r} is not a Kaldi fbank front end "
                         f"({tuple(FBANK_FRONTENDS)})")
    _, _, mean, std = FBANK_FRONTENDS[frontend]
    return mean, 2.0 * std


def frontend_shape(frontend: str, n_samples: int) -> tuple[int, int]:
    """(bins, frames) of one clip of ``n_samples`` samples: 'logmel' (64, 1 + n // 512);
    'fbank' and 'beats' (128, 1 + (n - 400) // 160); 'clap' (64, 1001) for any clip up to
    10 s at 48 kHz; 'opera' (64, 1 + n // 512). 8 s: (64, 251) and (128, 798)."""
    if frontend == "logmel":
        return N_MELS, num_frames(n_samples)
    if frontend in FBANK_FRONTENDS:
        return FBANK_BINS, kaldi_num_frames(n_samples)
    if frontend in htsat_frontends.FRONTENDS:
        return htsat_frontends.shape(frontend, n_samples)
    raise ValueError(f"data.frontend must be one of {FRONTENDS}, got {frontend!r}")


def input_shape(config) -> tuple[int, int]:
    """(bins, frames) of one example of ``config`` (data.frontend, data.duration) as the
    model receives it."""
    samples = int(round(float(config.data.duration) * int(config.data.sample_rate)))
    return frontend_shape(str(config.data.get("frontend", "logmel")), samples)


def fbank_batch(waves, frontend: str = "fbank", scale: float = 1.0) -> np.ndarray:
    """[n, 128, frames] float32 `kaldi_fbank` of equal-length 16 kHz waves [n, samples] as
    ``frontend`` ('fbank': AST's, 'beats': BEATs') computes it, each wave first multiplied by
    ``scale`` (``data.wave_scale``: upstream BEATs multiplies by 2**15, PAFA does not), stored
    (bins, frames) like the log-mel; not normalised (`normalise_fbank`)."""
    window, remove_mean = FBANK_FRONTENDS[frontend][:2]
    waves = np.asarray(waves)
    frames = kaldi_num_frames(waves.shape[-1])
    out = np.empty((len(waves), FBANK_BINS, frames), np.float32)
    for i, wave in enumerate(waves):
        if scale != 1.0:
            wave = np.asarray(wave, np.float64) * scale
        out[i] = kaldi_fbank(wave, SAMPLE_RATE, FBANK_BINS, remove_mean=remove_mean,
                             window=window).T
    return out
