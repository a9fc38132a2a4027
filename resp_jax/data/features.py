"""The log-mel spectrogram of docs/method.md §2.4, in numpy/librosa (reference) and TF (pipeline).

n_fft 1024, periodic Hann window of 1024, hop 512, centred frames with reflect padding,
power 2, 64 HTK mel bands 50-2000 Hz without area normalisation, 10*log10(max(x, 1e-10)).
Output is [..., 64 mel, T] with T = 1 + n // 512 (8 s at 16 kHz: 251 frames).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

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
