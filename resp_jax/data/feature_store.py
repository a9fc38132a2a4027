"""Features of every split, computed once per run: each prepared cycle fitted to the clip
length and turned into a log-mel (``data.frontend='logmel'``, CNN6) or a Kaldi fbank
(``'fbank'``, AST), kept on the host for the tf.data pipeline to batch.

docs/method.md §2.3-2.4 and §9. Cycles too short to fill one STFT window are reported (one warning
per split), since tiling them makes a clip the model never hears in real recordings.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from resp_jax.data import audio, features, htsat_frontends, metadata

FEATURE_CHUNK = 64  # cycles per log-mel call (float64 STFT: ~0.4 GB transient at 8 s)
SHORT_NAMED = 10    # short cycles named in the warning; the rest are counted


@dataclasses.dataclass
class SplitFeatures:
    """Features of one split, with the codes needed to label a batch."""
    x: np.ndarray            # [n, bins, T] float32: log-mel (dB, 64 bins) or fbank (128)
    lo: np.ndarray           # [n] float32 per-example minimum of x (for batch min-max)
    hi: np.ndarray           # [n] float32 per-example maximum of x
    codes: dict              # base field -> int32 [n]
    stem: list
    patient: list
    index: np.ndarray | None = None  # int32 [n]: cycle position in its recording
    start: np.ndarray | None = None  # float64 [n]: start and end (s) as cut; NaN unknown
    end: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def label(self) -> np.ndarray:
        return self.codes["label"]

    @classmethod
    def of(cls, x, codes: dict, stem=None, patient=None, index=None, start=None,
           end=None) -> "SplitFeatures":
        """From a [n, bins, T] array and base-field codes (per-example extremes computed)."""
        x = np.asarray(x, np.float32)
        n = len(x)
        empty = np.zeros(0, np.float32)
        unknown = np.full(n, np.nan)
        return cls(x=x, lo=x.min(axis=(1, 2)) if n else empty,
                   hi=x.max(axis=(1, 2)) if n else empty,
                   codes={k: np.asarray(v, np.int32) for k, v in codes.items()},
                   stem=list(stem) if stem is not None else [""] * n,
                   patient=list(patient) if patient is not None else [""] * n,
                   index=np.asarray(index if index is not None else np.arange(n), np.int32),
                   start=np.asarray(unknown if start is None else start, np.float64),
                   end=np.asarray(unknown if end is None else end, np.float64))

    def take(self, rows) -> "SplitFeatures":
        """The examples at ``rows`` (e.g. a validation split carved from training)."""
        rows = np.asarray(rows, np.int64)
        return SplitFeatures(x=self.x[rows], lo=self.lo[rows], hi=self.hi[rows],
                             codes={k: v[rows] for k, v in self.codes.items()},
                             stem=[self.stem[i] for i in rows],
                             patient=[self.patient[i] for i in rows],
                             index=None if self.index is None else self.index[rows],
                             start=None if self.start is None else self.start[rows],
                             end=None if self.end is None else self.end[rows])


class Features:
    """The features of every split of a prepared dataset, computed once per run.

    Each cycle is made ``config.data.duration`` s long (`audio.fit`, mode ``config.data.pad``)
    and turned into a [64, T] log-mel with `features.logmel_tf` or (``data.frontend``
    'fbank') a [128, T] Kaldi fbank with `features.fbank_batch`, in batches.
    """

    def __init__(self, prepared, config, *, chunk: int = FEATURE_CHUNK):
        sr = int(config.data.sample_rate)
        self.frontend = str(config.data.get("frontend", "logmel"))  # older runs: log-mel
        check_sample_rate(self.frontend, sr)
        self.sample_rate = sr
        self.dataset = prepared.dataset
        self.schema = prepared.schema
        self.samples = int(round(float(config.data.duration) * sr))
        if self.samples <= features.HOP:
            raise ValueError(f"config.data.duration={config.data.duration} s is too short; "
                             f"expected more than {features.HOP / sr} s")
        self.bins, self.frames = features.frontend_shape(self.frontend, self.samples)
        if self.frames < 1:
            raise ValueError(f"config.data.duration={config.data.duration} s is too short for "
                             f"one {self.frontend} frame")
        self.pad = str(config.data.pad)
        self.wave_scale = float(config.data.get("wave_scale", 1.0))  # Kaldi fbank front ends
        self.splits = {name: self._compute(name, split, chunk)
                       for name, split in prepared.splits.items()}
        self._variables = {}
        self._field_cache = {}

    @classmethod
    def from_splits(cls, dataset: str, splits: dict, samples: int, pad: str = "circular",
                    frontend: str = "logmel", schema=None):
        """Features assembled from `SplitFeatures` already computed (subsets, tests)."""
        self = cls.__new__(cls)
        self.dataset, self.samples, self.pad = dataset, int(samples), pad
        self.sample_rate = features.sample_rate(frontend)
        self.schema = metadata.schema(schema or dataset)
        self.frontend = frontend
        self.bins, self.frames = features.frontend_shape(frontend, self.samples)
        for name, s in splits.items():
            if s.x.shape[1:] != self.input_shape:
                raise ValueError(f"split {name!r} has features {s.x.shape[1:]}; expected "
                                 f"{self.input_shape} for {samples} samples")
        self.splits = dict(splits)
        self._variables = {}
        self._field_cache = {}
        return self

    def _compute(self, name: str, split, chunk: int) -> SplitFeatures:
        n = len(split)
        _warn_short(name, split, self.samples, self.pad, self.sample_rate)
        x = np.empty((n,) + self.input_shape, np.float32)
        fade = audio.fade_length(self.sample_rate)
        for a in range(0, n, chunk):
            waves = np.stack([audio.fit(w, self.samples, self.pad, fade)
                              for w in split.audio[a:a + chunk]])
            if self.frontend in features.FBANK_FRONTENDS:
                x[a:a + len(waves)] = features.fbank_batch(waves, self.frontend, self.wave_scale)
            elif self.frontend in htsat_frontends.FRONTENDS:
                x[a:a + len(waves)] = htsat_frontends.logmel(self.frontend, waves)
            else:
                x[a:a + len(waves)] = features.logmel_tf(waves).numpy()
        return SplitFeatures.of(x, split.codes, split.stem, split.patient, split.index,
                                split.start, split.end)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(bins, frames) of one example."""
        return (self.bins, self.frames)

    def __getitem__(self, split: str) -> SplitFeatures:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"{self.dataset} features have no split {split!r}; "
                           f"expected one of {sorted(self.splits)}") from None

    def field(self, split: str, field: str) -> np.ndarray:
        """int32 [n] codes of a (possibly composite) metadata field, or of the split's patients
        (`metadata.PATIENT`); -1 unknown."""
        key = (split, field)
        if field == metadata.PATIENT and key not in self._field_cache:
            self._field_cache[key] = metadata.patient_codes(self[split].patient)
        if key not in self._field_cache:
            metadata.check_fields(self.schema, [field])
            self._field_cache[key] = metadata.combine(self.schema, field, self[split].codes)
        return self._field_cache[key]

    def variable(self, split: str):
        """The split's features as a TF variable: tf.data captures it by handle, not by value."""
        import tensorflow as tf

        if split not in self._variables:
            with tf.device("/cpu:0"):
                self._variables[split] = tf.Variable(self[split].x, trainable=False)
        return self._variables[split]


def check_sample_rate(frontend: str, sample_rate: int) -> None:
    """``data.sample_rate`` must be the rate ``frontend`` is defined at (48 kHz for CLAP's
    log-mel, 16 kHz for the others): the prepared cycles are resampled to it."""
    want = features.sample_rate(frontend)
    if int(sample_rate) != want:
        raise ValueError(f"config.data.sample_rate={sample_rate}; data.frontend={frontend!r} is "
                         f"defined at {want} Hz: set data.sample_rate={want} "
                         "(docs/method.md §2.4, §12)")


def _warn_short(name: str, split, samples: int, pad: str, sr: int = audio.SAMPLE_RATE) -> None:
    """One warning per split naming the cycles shorter than one STFT window (`features.N_FFT`
    samples) that `audio.fit` repeats (or zero-pads) to ``samples``."""
    window = features.N_FFT * sr // audio.SAMPLE_RATE
    short = [i for i, w in enumerate(split.audio) if len(w) < min(window, samples)]
    if not short:
        return
    names = [f"{split.stem[i]}#{int(split.index[i])}" if split.stem[i]
             else f"cycle {int(split.index[i])}" for i in short]
    listed = ", ".join(names[:SHORT_NAMED]) + (
        f", ... ({len(names) - SHORT_NAMED} more)" if len(names) > SHORT_NAMED else "")
    logging.warning("%s split: %d cycle(s) shorter than one STFT window (%d samples, %.0f ms) "
                    "were %s to %.2f s clips: %s", name, len(short), window,
                    1000 * window / sr, "tiled" if pad == "circular" else "zero-padded",
                    samples / sr, listed)
