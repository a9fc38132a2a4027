"""tools/compare_preparations.py: the figures behind docs/fidelity.md's resampler and fp16
rows, on a tiny synthetic ICBHI root."""

import importlib.util
from pathlib import Path

import numpy as np

from resp_jax.data import audio, synthetic

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "compare_preparations", REPO / "tools" / "compare_preparations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_differences_between_preparations(tmp_path, capsys):
    tool = _tool()
    root = synthetic.write_icbhi(tmp_path / "icbhi", recordings=3, seed=0, patients=3)
    wavs = sorted((root / "ICBHI_final_database").glob("*.wav"))
    rows = {w.stem: tool.compare(w, audio.SAMPLE_RATE) for w in wavs}
    for r in rows.values():
        # The two resamplers differ a little; the fp16 mel product by rounding only.
        assert 0 < r["resampler_mean"] < 0.2 and r["resampler_max"] < 3
        assert 0 < r["fp16_mean"] < 0.01 and r["fp16_max"] < 0.2
        # A 4 kHz recording's bins above 2 kHz hold only what the filters let through.
        if r["rate"] == 4000:
            assert r["above_nyquist_bins"] == 60
            assert r["above_nyquist_mean"] > r["resampler_mean"]
    assert {r["rate"] for r in rows.values()} >= {4000, 44100}
    assert tool.main([f"--root={root}", "--duration=0.5"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + len(wavs) and all(w.stem in "".join(printed) for w in wavs)
    # Without the fp16 product the fbank is features.kaldi_fbank's, normalised.
    wave = np.random.default_rng(0).standard_normal(audio.SAMPLE_RATE).astype(np.float32) * 0.1
    np.testing.assert_allclose(tool._fbank(wave, fp16_mel=True), tool._fbank(wave), atol=0.01)
