"""audio.load / resample / cut / cycles / fit against plain numpy references (docs/method.md
§2.1-2.3)."""

import math

import numpy as np
import pytest
import soundfile as sf

from resp_jax.data import audio
from resp_jax.data.records import DataError

SR = 16000


def _ramp_up(n):
    """Gains of a linear fade-in over n samples: 0 at the first, 1 at the last."""
    return np.arange(n) / (n - 1)


def _cut_ref(wave, start, end, sr=SR, fade=1000):
    a = min(int(start * sr), len(wave))
    b = min(int(end * sr), len(wave))
    out = wave[a:b].astype(np.float64).copy()
    for i in range(min(fade, len(out))):
        out[i] *= i / (fade - 1)
        out[len(out) - 1 - i] *= i / (fade - 1)
    return out


def _fit_ref(wave, n, mode, fade=1000):
    w = list(wave)
    if len(w) > n:  # the reference codes: `if audio.shape[-1] > target: cut; else: pad`
        return np.array(w[:n])
    if mode == "zero":
        left = (n - len(w)) // 2
        return np.array([0.0] * left + w + [0.0] * (n - len(w) - left))
    out = []
    while len(out) < n:
        out.extend(w)
    out = np.array(out[:n], dtype=np.float64)
    for i in range(fade):
        out[n - 1 - i] *= i / (fade - 1)
    return out


# ---------------------------------------------------------------- load


def _tone(sr, seconds, freq=440.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return amp * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("resampler", audio.RESAMPLERS)
@pytest.mark.parametrize("sr,subtype", [(4000, "PCM_16"), (10000, "PCM_24"),
                                        (44100, "PCM_32"), (16000, "PCM_16")])
def test_load_resamples_to_16k(tmp_path, sr, subtype, resampler):
    path = tmp_path / "x.wav"
    sf.write(path, _tone(sr, 2.0, freq=300.0), sr, subtype=subtype)
    y = audio.load(path, resampler=resampler)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 2.0 * SR) <= 1
    # Away from the edges the resampled tone is the same tone at 16 kHz (resampler ringing
    # and 16-bit quantisation stay below 1e-3 of full scale).
    ref = _tone(SR, 2.0, freq=300.0)[:len(y)]
    mid = slice(SR // 4, len(y) - SR // 4)
    np.testing.assert_allclose(y[mid], ref[mid], atol=1e-3)


def _torchaudio_resample_ref(x, orig, new, zeros=6, rolloff=0.99):
    """torchaudio.functional.resample's published algorithm with its defaults
    (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99), written as a direct sum over the
    input for every output sample: y[m] = sum_q x[q] h(base (q / orig - m / new)) base / orig,
    base = min(orig, new) x rolloff, h(t) = sinc(t) cos^2(pi t / (2 zeros)) on |t| <= zeros
    and 0 beyond; ceil(new x len(x) / orig) samples."""
    base = min(orig, new) * rolloff
    q = np.arange(len(x))
    out = np.empty(math.ceil(new * len(x) / orig))
    for m in range(len(out)):
        t = base * (q / orig - m / new)
        h = np.where(np.abs(t) <= zeros, np.sinc(t) * np.cos(np.pi * t / (2 * zeros)) ** 2, 0.0)
        out[m] = np.dot(x.astype(np.float64), h) * base / orig
    return out


@pytest.mark.parametrize("orig,new", [(4000, 16000), (10000, 16000), (44100, 16000),
                                      (8000, 16000), (16000, 8000)])
def test_torchaudio_resampler_matches_a_direct_sum(orig, new):
    # Noise (every frequency) of a length that is no multiple of the reduced rates, so the
    # padding at both ends and the last partial block are exercised.
    x = np.random.default_rng(orig).standard_normal(orig // 20 + 7).astype(np.float32)
    got = audio.resample(x, orig, new, "torchaudio")
    ref = _torchaudio_resample_ref(x, orig, new)
    assert got.dtype == np.float32 and got.shape == ref.shape
    # The kernel is float32 (as torchaudio caches it), its phases j / new rounded to float32
    # first: 1e-5 of unit-variance noise.
    np.testing.assert_allclose(got, ref, atol=3e-5)
    np.testing.assert_array_equal(audio.resample(x, orig, orig, "torchaudio"), x)  # same rate


def test_resamplers_differ_where_expected():
    """Both keep a tone below the source's Nyquist; only the filters' edges differ."""
    x = _tone(4000, 1.0, freq=500.0).astype(np.float32)
    a, b = (audio.resample(x, 4000, SR, r) for r in audio.RESAMPLERS)
    mid = slice(SR // 8, -SR // 8)
    np.testing.assert_allclose(a[mid], b[mid], atol=2e-3)
    assert len(a) == 4 * len(x) and abs(len(b) - len(a)) <= 1
    with pytest.raises(ValueError, match="resampler 'linear'"):
        audio.resample(x, 4000, SR, "linear")


def test_load_mixes_channels_down(tmp_path):
    left, right = _tone(SR, 0.5, 200.0, 0.4), _tone(SR, 0.5, 700.0, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(audio.load(path), (left + right) / 2, atol=1e-7)


def test_load_high_resolution_pcm_keeps_its_bits(tmp_path):
    # 24- and 32-bit samples read back as the integers written, scaled to [-1, 1).
    ints = np.array([0, 1, -1, 2**23 - 1, -(2**23), 12345], np.int32)
    path = tmp_path / "x.wav"
    sf.write(path, ints << 8, SR, subtype="PCM_32")
    np.testing.assert_allclose(audio.load(path), ints / 2.0**23, atol=2.0**-24)


def test_load_real_icbhi_recordings(icbhi_real):
    wavs = sorted((icbhi_real / "ICBHI_final_database").glob("*.wav"))
    assert len(wavs) == 10
    for path in wavs:
        info = sf.info(path)
        y = audio.load(path)
        assert abs(len(y) - info.frames * SR / info.samplerate) <= 1, path
        assert np.isfinite(y).all() and 0 < np.abs(y).max() <= 1.5, path


def _wav_bytes(tmp_path):
    path = tmp_path / "good.wav"
    sf.write(path, _tone(SR, 1.0), SR, subtype="PCM_16")
    return path.read_bytes()


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "header_only", "text",
                                  "flac", "no_samples"])
def test_load_bad_file_names_it(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        data = _wav_bytes(tmp_path)
        path.write_bytes(data[:len(data) // 2])
    elif case == "header_only":
        path.write_bytes(_wav_bytes(tmp_path)[:40])
    elif case == "text":
        path.write_text("start\tend\n0.1\t0.2\n")
    elif case == "flac":
        sf.write(tmp_path / "x.flac", _tone(SR, 0.5), SR)
        path.write_bytes((tmp_path / "x.flac").read_bytes())
    elif case == "no_samples":
        sf.write(path, np.zeros(0), SR, subtype="PCM_16")
    with pytest.raises(DataError) as err:
        audio.load(path)
    assert str(path) in str(err.value)
    assert "expected" in str(err.value)


# ---------------------------------------------------------------- cut


def test_cut_matches_reference():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(5 * SR).astype(np.float32)
    for start, end in [(0.0, 1.0), (0.3, 2.71), (1.23456, 4.0), (4.5, 9.0), (0.0, 0.05)]:
        got = audio.cut(wave, start, end)
        np.testing.assert_allclose(got, _cut_ref(wave, start, end), rtol=1e-6, atol=1e-7)


def test_cut_fades_and_clamps():
    wave = np.ones(3 * SR, np.float32)
    y = audio.cut(wave, 1.0, 10.0)              # past the end: clamped at 3 s
    assert len(y) == 2 * SR
    assert y[0] == 0 and y[-1] == 0
    np.testing.assert_allclose(y[:1000], _ramp_up(1000), atol=1e-7)
    np.testing.assert_allclose(y[-1000:], _ramp_up(1000)[::-1], atol=1e-7)
    assert (y[1000:-1000] == 1).all()
    assert len(audio.cut(wave, 4.0, 5.0)) == 0  # wholly past the end


def test_cycles_fade_each_cycle_or_the_recording():
    rng = np.random.default_rng(1)
    wave = rng.standard_normal(3 * SR).astype(np.float32)
    spans = [(0.0, 1.0), (1.0, 2.2), (2.5, 9.0)]
    for (a, b), got in zip(spans, audio.cycles(wave, spans, "cycle")):
        np.testing.assert_array_equal(got, audio.cut(wave, a, b))
    # 'recording': the recording faded over its first and last 1000 samples, cycles unfaded.
    faded = wave.astype(np.float64) * np.minimum(
        1.0, np.minimum(np.arange(len(wave)), np.arange(len(wave))[::-1]) / 999.0)
    first, middle, last = audio.cycles(wave, spans, "recording")
    np.testing.assert_allclose(first, faded[:SR], atol=1e-7)
    np.testing.assert_array_equal(middle, wave[SR:int(2.2 * SR)])  # no fade of its own
    np.testing.assert_allclose(last, faded[int(2.5 * SR):], atol=1e-7)
    assert first[0] == 0 and last[-1] == 0 and middle[0] == wave[SR]
    with pytest.raises(ValueError, match="fade mode 'both'"):
        audio.cycles(wave, spans, "both")


@pytest.mark.parametrize("fade_mode", audio.FADE_MODES)
def test_padding_seams_follow_the_fades(fade_mode):
    """Repeats of a padded cycle meet at faded seams ('cycle', the SCL code) or at hard ones
    ('recording', PAFA's and Patch-Mix's unfaded cycles)."""
    wave = np.ones(3 * SR, np.float32)
    (c,) = audio.cycles(wave, [(1.0, 1.5)], fade_mode)
    clip = audio.fit(c, 5 * SR)
    n = len(c)
    seams = clip[n - 5:n + 5]                      # the end of the first repeat, the next
    if fade_mode == "cycle":
        assert seams[4] == 0 and seams[5] == 0     # faded out, faded in
    else:
        np.testing.assert_array_equal(seams, 1.0)  # no dip
        np.testing.assert_array_equal(clip[:-1000], 1.0)
    assert clip[-1] == 0                           # the clip's own fade-out either way


# ---------------------------------------------------------------- fit


@pytest.mark.parametrize("mode", ["circular", "zero"])
@pytest.mark.parametrize("length", [700, 3000, 15999, 16000, 16001, 40000])
def test_fit_matches_reference(mode, length):
    wave = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    got = audio.fit(wave, 16000, mode)
    assert got.shape == (16000,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _fit_ref(wave, 16000, mode), rtol=1e-6, atol=1e-7)


def test_fit_semantics():
    wave = np.arange(1, 3001, dtype=np.float32)
    c = audio.fit(wave, 8000, "circular")
    np.testing.assert_array_equal(c[3000:6000], wave)       # repeated
    assert c[-1] == 0 and c[-1001] == wave[(8000 - 1001) % 3000]  # only the last 1000 fade
    z = audio.fit(wave, 8000, "zero")
    assert (z[:2500] == 0).all() and (z[5500:] == 0).all()
    np.testing.assert_array_equal(z[2500:5500], wave)        # centred
    # Exact length: repeated once, so faded out as a shorter cycle would be (the codes' `>`).
    np.testing.assert_array_equal(audio.fit(wave, 3000)[:2000], wave[:2000])
    assert audio.fit(wave, 3000)[-1] == 0 and (audio.fit(wave, 3000, "zero") == wave).all()
    with pytest.raises(ValueError, match="pad mode"):
        audio.fit(wave, 8000, "reflect")
