"""The log-mel front ends of the HTS-AT checkpoints (docs/method.md §12): CLAP's and
OPERA-CT's, each as its own feature code computes it, in numpy/librosa.

``data.frontend='clap'``: transformers' ``ClapFeatureExtractor`` with the settings of
``laion/clap-htsat-unfused`` (`CLAP_EXTRACTOR`; the unfused model's ``rand_trunc`` /
``repeatpad``): a 48 kHz clip of at most 10 s is tiled a whole number of times (int(480000 /
n)) and zero-padded to 10 s, then a centred STFT (periodic Hann of 1024, hop 480, reflect
padding), power, 64 Slaney mel bands 50 Hz - 14 kHz with Slaney area normalisation, and
10 log10(max(x, 1e-10)): [64, 1001].

``data.frontend='opera'``: OPERA's ``pre_process_audio_mel_t`` (src/util.py) as its
feature extraction calls it (``f_max=8000``): a 16 kHz clip, a centred STFT (periodic Hann of
1024, hop 512, zero padding: librosa's default since 0.10, OPERA pins 0.10.1), power, 64
Slaney mel bands 50 Hz - 8 kHz, ``power_to_db(ref=max)`` (floor 1e-10, top_db 80), then
min-max over the whole spectrogram to [0, 1] (a constant one is left as it is):
[64, 1 + n // 512] (8 s: 251; OPERA's fine-tuning clips of 8.18 s: 256).

Both are stored (bins, frames) like the log-mel and reach the model unnormalised: HTS-AT
normalises its input with its own BatchNorm (`resp_jax.models.htsat`).
"""

from __future__ import annotations

import librosa
import numpy as np

# transformers' ClapFeatureExtractor fields as laion/clap-htsat-unfused's
# preprocessor_config.json sets them (tools/convert_clap.py checks a checkpoint's copy).
CLAP_EXTRACTOR = {
    "sampling_rate": 48000, "feature_size": 64, "fft_window_size": 1024, "hop_length": 480,
    "max_length_s": 10, "frequency_min": 50, "frequency_max": 14000, "top_db": None,
    "truncation": "rand_trunc", "padding": "repeatpad",
}
CLAP_MAX_SAMPLES = CLAP_EXTRACTOR["max_length_s"] * CLAP_EXTRACTOR["sampling_rate"]
OPERA = {"sample_rate": 16000, "n_mels": 64, "fmin": 50.0, "fmax": 8000.0, "n_fft": 1024,
         "hop": 512, "top_db": 80.0}
AMIN = 1e-10
RATES = {"clap": CLAP_EXTRACTOR["sampling_rate"], "opera": OPERA["sample_rate"]}
FRONTENDS = tuple(RATES)


def shape(frontend: str, n_samples: int) -> tuple[int, int]:
    """(bins, frames) of one clip of ``n_samples`` at the front end's rate."""
    if frontend == "clap":
        if n_samples > CLAP_MAX_SAMPLES:
            raise ValueError(f"the CLAP front end takes clips of at most "
                             f"{CLAP_EXTRACTOR['max_length_s']} s ({CLAP_MAX_SAMPLES} samples "
                             f"at 48 kHz), got {n_samples} samples; set data.duration <= 10")
        return CLAP_EXTRACTOR["feature_size"], 1 + CLAP_MAX_SAMPLES // CLAP_EXTRACTOR["hop_length"]
    if frontend == "opera":
        return OPERA["n_mels"], 1 + n_samples // OPERA["hop"]
    raise ValueError(f"not an HTS-AT front end: {frontend!r} (expected one of {FRONTENDS})")


def clap_pad(wave: np.ndarray) -> np.ndarray:
    """ClapFeatureExtractor's 'repeatpad' to 10 s: the clip tiled int(480000 / n) times, then
    zeros."""
    wave = np.asarray(wave, np.float64)
    if not 0 < len(wave) <= CLAP_MAX_SAMPLES:
        raise ValueError(f"CLAP clips hold 1 to {CLAP_MAX_SAMPLES} samples, got {len(wave)}")
    tiled = np.tile(wave, CLAP_MAX_SAMPLES // len(wave))
    return np.pad(tiled, (0, CLAP_MAX_SAMPLES - len(tiled)))


def mel_power(waves, sr: int, n_fft: int, hop: int, pad_mode: str, n_mels: int,
              fmin: float, fmax: float) -> np.ndarray:
    """[n, n_mels, 1 + samples // hop] float64 Slaney mel power of ``waves`` [n, samples]:
    ``librosa.feature.melspectrogram(center=True, window='hann', power=2, htk=False,
    norm='slaney')``'s numbers, framed here and transformed with numpy's FFT (librosa's own
    STFT took 1.2 s per 10 s clip at 48 kHz on the 2-core CI machine, this 0.15 s)."""
    waves = np.atleast_2d(np.asarray(waves, np.float64))
    padded = np.pad(waves, ((0, 0), (n_fft // 2, n_fft // 2)), mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy's get_window('hann')
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                htk=False, norm="slaney", dtype=np.float64)
    out = np.empty((len(waves), n_mels, frames.shape[1]))
    for i in range(len(waves)):  # one clip's spectrum at a time (8 MB at 10 s, 48 kHz)
        spectrum = np.fft.rfft(frames[i] * window, axis=-1)
        out[i] = basis @ (spectrum.real ** 2 + spectrum.imag ** 2).T
    return out


def clap_logmel(waves) -> np.ndarray:
    """[n, 64, 1001] float32 CLAP log-mel (dB) of 48 kHz clips ``waves`` [n, samples]."""
    c = CLAP_EXTRACTOR
    padded = np.stack([clap_pad(w) for w in np.atleast_2d(np.asarray(waves))])
    mel = mel_power(padded, c["sampling_rate"], c["fft_window_size"], c["hop_length"],
                    "reflect", c["feature_size"], c["frequency_min"], c["frequency_max"])
    return (10.0 * np.log10(np.maximum(mel, AMIN))).astype(np.float32)


def opera_logmel(waves) -> np.ndarray:
    """[n, 64, 1 + samples // 512] float32 OPERA log-mel (min-maxed to [0, 1]) of 16 kHz
    clips ``waves`` [n, samples]."""
    o = OPERA
    mel = mel_power(waves, o["sample_rate"], o["n_fft"], o["hop"], "constant", o["n_mels"],
                    o["fmin"], o["fmax"])
    out = np.empty(mel.shape, np.float32)
    for i, s in enumerate(mel):
        db = librosa.power_to_db(s, ref=np.max, amin=AMIN, top_db=o["top_db"])
        lo, hi = db.min(), db.max()
        out[i] = (db - lo) / (hi - lo) if hi != lo else db
    return out


def logmel(frontend: str, waves) -> np.ndarray:
    """[n, bins, frames] float32 features of ``frontend`` for clips at its rate."""
    if frontend == "clap":
        return clap_logmel(waves)
    if frontend == "opera":
        return opera_logmel(waves)
    raise ValueError(f"not an HTS-AT front end: {frontend!r} (expected one of {FRONTENDS})")
