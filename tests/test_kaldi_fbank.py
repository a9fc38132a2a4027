"""kaldi_fbank (resp_jax/data/features.py, the AST front end) against Hugging Face's
ASTFeatureExtractor (docs/method.md §9).

ASTFeatureExtractor computes torchaudio.compliance.kaldi.fbank when torchaudio is importable
and an independent numpy version (transformers.audio_utils: Kaldi mel scale, 'hann' symmetric
400-sample window, 512-point FFT, pre-emphasis 0.97, DC removal, float32-epsilon floor)
otherwise. The PyPI torchaudio wheel cannot load beside the CPU build of torch this project
pins, so these tests force and compare with the numpy path (also in an environment that has
torchaudio). Measured: max |difference| 1e-6 in log units (float32 rounding). A one-off check
against torchaudio's own kaldi.py (float32) gave at most 6.5e-4 on quiet bins near the floor,
the same size as torchaudio's own float32-versus-float64 spread there.
"""

import numpy as np
import pytest

from resp_jax.data import features

pytest.importorskip("transformers")

TOLERANCE = 1e-5  # max |ours - HF| in log-mel units


@pytest.fixture
def hf_numpy_extractor(monkeypatch):
    from transformers.models.audio_spectrogram_transformer import (
        feature_extraction_audio_spectrogram_transformer as module)

    monkeypatch.setattr(module, "is_speech_available", lambda: False)  # the numpy path

    def extract(wave, frames):
        extractor = module.ASTFeatureExtractor(max_length=frames, do_normalize=False)
        return extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]

    return extract


def _wave(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t < t[-1] / 2) + 0.05 * rng.standard_normal(n)
    wave[n // 3: n // 3 + 2000] = 0.0  # a silent stretch: the log floor
    return wave.astype(np.float32)


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
@pytest.mark.parametrize("n", [400, 12345, 128000])
def test_matches_hugging_face_numpy_path(hf_numpy_extractor, n):
    wave = _wave(n)
    ours = features.kaldi_fbank(wave, remove_mean=False)  # HF does not subtract the mean
    frames = features.kaldi_num_frames(n)
    assert ours.shape == (frames, 128) and ours.dtype == np.float32
    theirs = hf_numpy_extractor(wave, frames)
    assert np.abs(ours - theirs).max() < TOLERANCE


def test_frames_floor_and_errors():
    assert features.kaldi_num_frames(128000) == 798  # 8 s, Patch-Mix's clip
    assert features.kaldi_num_frames(163840) == 1022  # 10.24 s; AST pads to 1024
    assert features.kaldi_num_frames(399) == 0
    silent = features.kaldi_fbank(np.zeros(1000, np.float32))
    np.testing.assert_array_equal(silent, np.log(np.finfo(np.float32).eps))
    with pytest.raises(ValueError, match="at least 400 samples"):
        features.kaldi_fbank(np.zeros(399))
    with pytest.raises(ValueError, match="mono"):
        features.kaldi_fbank(np.zeros((2, 1000)))
    with pytest.raises(ValueError, match="16000 Hz"):
        features.kaldi_fbank(np.zeros(1000), sample_rate=8000)


def test_mean_removal_is_redundant_with_per_frame_dc_removal():
    """AST subtracts the waveform's mean first; Kaldi's per-frame DC removal already cancels
    any constant offset, so both settings agree (to rounding)."""
    wave = _wave(16000)
    base = features.kaldi_fbank(wave, remove_mean=False)
    np.testing.assert_allclose(features.kaldi_fbank(wave + 0.25), base, atol=1e-4)
    np.testing.assert_allclose(features.kaldi_fbank(wave + 0.25, remove_mean=False), base,
                               atol=1e-4)


def test_mel_banks_are_kaldi_triangles():
    banks = features._kaldi_banks(128, 512, 16000)
    assert banks.shape == (257, 128)
    assert not banks[-1].any() and not banks[0].any()  # Nyquist and DC (below 20 Hz) unused
    assert (banks <= 1.0).all()
    # 128 filters on 31.25 Hz FFT bins: the lowest are narrower than a bin, and filter 3 (about
    # 63-93 Hz) holds no bin centre at all, so that fbank bin is always the log floor, in
    # torchaudio and in AST's AudioSet training data alike.
    np.testing.assert_array_equal(np.flatnonzero(~banks.any(axis=0)), [3])


def test_normalise_fbank():
    assert features.AUDIOSET_MEAN == -4.2677393 and features.AUDIOSET_STD == 4.5689974
    x = np.array([features.AUDIOSET_MEAN, features.AUDIOSET_MEAN + 2 * features.AUDIOSET_STD])
    np.testing.assert_allclose(features.normalise_fbank(x), [0.0, 1.0])
