"""How far two input preparations of the same recordings lie apart, in BEATs' normalised fbank
units (the figures of docs/fidelity.md's "Resampling" and "BEATs fbank" rows).

    python tools/compare_preparations.py --root=ICBHI [--duration=5]

For every recording of ``ROOT/ICBHI_final_database`` that has both its wav and its annotation
file, its cycles are prepared as PAFA does (whole recording resampled, faded at its ends,
cycles cut unfaded and repeated to ``--duration`` s; `data.fade='recording'`) once with each
resampler (`data.resampler`), and their BEATs fbank (`features.kaldi_fbank`, povey window,
normalised) compared: mean and largest |difference| over every cell, and the mean over the mel
bins above the recording's Nyquist frequency. A third column compares the torchaudio-resampled
fbank with the same fbank whose mel product runs as under PAFA's fp16 autocast (``torch.mm``
with float16 inputs and output, float32 accumulation; emulated in numpy).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from resp_jax.data import audio, features

FRONTEND = "beats"


def _fbank(wave: np.ndarray, fp16_mel: bool = False) -> np.ndarray:
    """BEATs' normalised fbank [frames, 128]; ``fp16_mel``: the mel product in float16."""
    if not fp16_mel:
        x = features.kaldi_fbank(wave, remove_mean=False, window="povey")
    else:
        x = np.asarray(wave, np.float64)
        starts = np.arange(features.kaldi_num_frames(len(x))) * features.KALDI_FRAME_SHIFT
        frames = x[starts[:, None] + np.arange(features.KALDI_FRAME_LENGTH)[None, :]]
        frames = frames - frames.mean(axis=1, keepdims=True)
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - features.KALDI_PREEMPHASIS * previous
        spectrum = np.fft.rfft(frames * features._kaldi_window("povey"), n=512, axis=1)
        power = (np.abs(spectrum) ** 2).astype(np.float32)   # float32, as the FFT runs
        banks = features._kaldi_banks(128, 512, audio.SAMPLE_RATE)
        half = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
        mel = (half(power) @ half(banks)).astype(np.float16)
        mel = np.maximum(mel, np.float16(features.KALDI_EPSILON)).astype(np.float32)
        x = np.log(mel)
    mean, std = features.fbank_norm(FRONTEND)
    return (x - mean) / std


def _bin_hz() -> np.ndarray:
    """Centre frequency of each of the 128 Kaldi mel bins (20 Hz - 8 kHz)."""
    mel = lambda f: 1127.0 * np.log1p(f / 700.0)  # noqa: E731
    centres = np.linspace(mel(features.KALDI_LOW_FREQ), mel(audio.SAMPLE_RATE / 2), 130)[1:-1]
    return 700.0 * np.expm1(centres / 1127.0)


def compare(wav: Path, samples: int) -> dict:
    rate = sf.info(str(wav)).samplerate
    spans = [tuple(map(float, line.split()[:2]))
             for line in wav.with_suffix(".txt").read_text().splitlines() if line.strip()]
    clips = {}
    for resampler in audio.RESAMPLERS:
        wave = audio.load(wav, resampler=resampler)
        clips[resampler] = [audio.fit(c, samples) for c in
                            audio.cycles(wave, spans, "recording") if len(c)]
    above = _bin_hz() > rate / 2
    ours = np.stack([_fbank(c) for c in clips["torchaudio"]])
    other = np.abs(ours - np.stack([_fbank(c) for c in clips["soxr"]]))
    half = np.abs(ours - np.stack([_fbank(c, fp16_mel=True) for c in clips["torchaudio"]]))
    return {"rate": rate, "cycles": len(ours), "resampler_mean": other.mean(),
            "resampler_max": other.max(),
            "above_nyquist_mean": other[..., above].mean() if above.any() else float("nan"),
            "above_nyquist_bins": int(above.sum()), "fp16_mean": half.mean(),
            "fp16_max": half.max()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="an ICBHI 2017 root")
    parser.add_argument("--duration", type=float, default=5.0, help="clip length (s)")
    args = parser.parse_args(argv)
    folder = args.root / "ICBHI_final_database"
    wavs = sorted(w for w in folder.glob("*.wav") if w.with_suffix(".txt").is_file())
    if not wavs:
        raise SystemExit(f"{folder}: no recording with its annotation file")
    samples = int(round(args.duration * audio.SAMPLE_RATE))
    print("recording                        Hz  cycles | torchaudio vs soxr: mean   max  "
          "above Nyquist (bins) | fp16 mel: mean    max")
    for wav in wavs:
        r = compare(wav, samples)
        print(f"{wav.stem:28s} {r['rate']:6d} {r['cycles']:6d} | {r['resampler_mean']:24.4f} "
              f"{r['resampler_max']:5.3f} {r['above_nyquist_mean']:9.4f} "
              f"({r['above_nyquist_bins']:3d}) | {r['fp16_mean']:13.5f} {r['fp16_max']:6.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
