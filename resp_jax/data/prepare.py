"""Prepared datasets: 16 kHz cycles with labels and metadata codes, cached with TFDS.

One TFDS builder per dataset reads the distributed files from a manual directory (the data
root) through the readers and `audio`, and stores every cycle (cut, faded, float32, 16 kHz)
with its label, stem, patient, cycle index, start and end (s, as cut) and the integer code
of every base metadata field.
A second run reads the cache: no decoding, no resampling, no reader.

The cache key is a fingerprint of the root's contents (`Source.fingerprint`: relative path,
size and mtime of every file; a manifest: its CSV's content, its audio files' sizes and
mtimes, and the classes and field values its codes follow) and of how the audio was
prepared (`data.sample_rate`, `data.resampler`, `data.fade`), used as the builder config name,
so changing, adding or removing a file makes a new prepared copy, and the root's older copies
with the same preparation are then removed (`prepared_copies`); another preparation of the
same root is a copy of its own, kept beside it. Items skipped on request (`skip_bad`) are
stored in the builder's metadata, so a cached load reports them too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from absl import logging

from resp_jax.data import audio, metadata, prepared_copies, records, sources
from resp_jax.data.prepared_copies import DEFAULT_DATA_DIR, FORMAT_VERSION


@dataclasses.dataclass
class Split:
    """The cycles of one split, in reader order."""
    audio: list                 # float32 [n_i] 16 kHz cycles, fades applied
    codes: dict                 # base field -> int32 [n] (Schema.stored_fields; -1 unknown)
    stem: list                  # recording stem per cycle
    patient: list               # patient id per cycle
    index: np.ndarray           # int32 [n]: cycle position in its recording's annotations
    start: np.ndarray = None    # float64 [n]: start and end (s) of each cycle as cut;
    end: np.ndarray = None      # None for cycles that are no dataset's (resp_jax.predict)

    def __len__(self) -> int:
        return len(self.audio)

    @property
    def label(self) -> np.ndarray:
        return self.codes["label"]

    def take(self, rows) -> "Split":
        """The cycles at ``rows`` (e.g. to carve a validation split)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Split(audio=[self.audio[i] for i in rows],
                     codes={k: v[rows] for k, v in self.codes.items()},
                     stem=[self.stem[i] for i in rows],
                     patient=[self.patient[i] for i in rows],
                     index=self.index[rows],
                     start=None if self.start is None else self.start[rows],
                     end=None if self.end is None else self.end[rows])


@dataclasses.dataclass
class Prepared:
    """A whole prepared dataset: its splits and what was skipped while reading it."""
    dataset: str
    root: str
    splits: dict                # split name -> Split
    skipped: list               # records.Skipped
    schema: sources.Schema = None  # classes and field values (None: the dataset's fixed one)

    def __post_init__(self):
        if self.schema is None:
            self.schema = sources.get(self.dataset).schema()

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"{self.dataset} has no split {split!r}; "
                           f"expected one of {sorted(self.splits)}") from None


def _decode_recording(path: str, cycles: list, sr: int = audio.SAMPLE_RATE,
                      resampler: str = audio.RESAMPLER, fade: str = audio.FADE_MODE) -> list:
    """All cycles of one recording from a single decode at ``sr`` Hz (in any format
    soundfile reads when the dataset's `Source` allows it, else PCM WAV), resampled with
    ``resampler`` and faded as ``fade`` says (`audio.cycles`)."""
    any_format = cycles and sources.get(cycles[0].dataset).any_audio_format
    wave = (audio.load_any if any_format else audio.load)(path, sr, resampler=resampler)
    return audio.cycles(wave, [(c.start, c.end) for c in cycles], fade, sr,
                        audio.fade_length(sr))


def _by_recording(cycles: list) -> list:
    groups = collections.OrderedDict()
    for i, c in enumerate(cycles):
        groups.setdefault(c.wav_path, []).append((i, c))
    return list(groups.items())


def _decoded(cycles: list, skip_bad: bool, skipped: list, workers: int,
             sr: int = audio.SAMPLE_RATE, resampler: str = audio.RESAMPLER,
             fade: str = audio.FADE_MODE) -> Iterator:
    """(position, cycle, wave) for every cycle, recordings decoded in parallel, in order.

    At most ``2 * workers`` recordings are decoded ahead of the consumer, bounding memory.
    A recording that fails to decode is skipped (and listed) when ``skip_bad``.
    """
    groups = iter(_by_recording(cycles))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()

        def submit(count):
            for path, items in itertools.islice(groups, count):
                pending.append((items, pool.submit(_decode_recording, path,
                                                   [c for _, c in items], sr, resampler,
                                                   fade)))

        submit(2 * workers)
        while pending:
            items, fut = pending.popleft()
            submit(1)
            try:
                waves = fut.result()
            except records.DataError as e:
                if not skip_bad:
                    for _, f in pending:
                        f.cancel()
                    raise
                skipped.append(records.Skipped(
                    e.path, f"{e.reason} ({len(items)} cycle(s) of this recording skipped)",
                    e.line).to_json())
                continue
            for (pos, c), w in zip(items, waves):
                yield pos, c, w


def _builder_class(dataset: str):
    """The TFDS builder class of ``dataset`` (defined on first use: TFDS is a slow import)."""
    cls = _builder_classes.get(dataset)
    if cls is not None:
        return cls
    import tensorflow_datasets as tfds
    from etils import epath

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = prepared_copies.BUILDER_PREFIX + dataset
        # Given, so TFDS does not infer them through importlib.resources (which fails for
        # editable installs of this package).
        pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))
        code_path = epath.Path(os.path.abspath(__file__))
        VERSION = tfds.core.Version(FORMAT_VERSION)
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Pass the root of the distributed {dataset} files (docs/method.md §1) as the manual dir.")
        DATASET = dataset

        def __init__(self, *, root, schema, skip_bad: bool = False, workers: int = 0,
                     sample_rate: int = audio.SAMPLE_RATE, resampler: str = audio.RESAMPLER,
                     fade: str = audio.FADE_MODE, **kw):
            self._root, self._schema = Path(root), schema
            self._sample_rate = int(sample_rate)
            self._resampler, self._fade = _preparation(resampler, fade)
            self._skip_bad = skip_bad
            self._workers = workers or max(1, min(4, os.cpu_count() or 1))
            super().__init__(**kw)

        def _info(self):
            fields = {f: np.int32 for f in self._schema.stored_fields}
            return self.dataset_info_from_configs(
                description=f"{dataset} respiratory cycles at {self._sample_rate} Hz",
                features=tfds.features.FeaturesDict({
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32,
                                                  encoding=tfds.features.Encoding.BYTES),
                    "stem": tfds.features.Text(),
                    "patient": tfds.features.Text(),
                    "index": np.int32,
                    # bytes: tf.train.Example holds float32 only; these keep every digit
                    "start": tfds.features.Tensor(shape=(), dtype=np.float64,
                                                  encoding=tfds.features.Encoding.BYTES),
                    "end": tfds.features.Tensor(shape=(), dtype=np.float64,
                                                encoding=tfds.features.Encoding.BYTES),
                    "order": np.int32,
                    **fields,
                }),
                disable_shuffling=True,
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            root = self._root   # a manifest's CSV; its folder is the manual dir
            source = sources.get(dataset)
            result = source.read_prepared(root, skip_bad=self._skip_bad, schema=self._schema)
            # Stored with the examples as JSON; extended while the splits are generated (TFDS
            # writes the metadata after the last split).
            skipped = [s.to_json() for s in result.skipped]
            self.info.metadata["root"] = str(root)
            self.info.metadata["skipped"] = skipped
            if self._sample_rate != audio.SAMPLE_RATE:
                self.info.metadata["sample_rate"] = self._sample_rate
            self.info.metadata["audio"] = prepared_copies.preparation_key(self._resampler,
                                                                          self._fade)
            if source.schema_from_data:
                self.info.metadata["schema"] = prepared_copies.schema_json(self._schema)
            return {split: self._generate_examples(result.split(split), skipped)
                    for split in result.splits}

        def _generate_examples(self, cycles, skipped):
            for pos, c, wave in _decoded(cycles, self._skip_bad, skipped, self._workers,
                                         self._sample_rate, self._resampler, self._fade):
                if len(wave) == 0:
                    msg = (f"cycle {c.index} ({c.start}-{c.end} s) holds no audio; expected "
                           "start < end inside the recording")
                    if not self._skip_bad:
                        raise records.DataError(c.wav_path, msg)
                    skipped.append(records.Skipped(c.wav_path, msg).to_json())
                    continue
                ex = {"audio": wave, "stem": c.stem, "patient": c.patient,
                      "index": c.index, "start": c.start, "end": c.end, "order": pos}
                for f in self._schema.stored_fields:
                    ex[f] = metadata.encode_base(self._schema, f, metadata.value(c, f))
                yield f"{pos:07d}", ex

    _Builder.__name__ = _Builder.__qualname__ = "RespJax" + dataset.title().replace("_", "")
    _Builder.__module__ = __name__
    _builder_classes[dataset] = _Builder
    return _Builder


_builder_classes: dict = {}


def _preparation(resampler: str, fade: str) -> tuple:
    if resampler not in audio.RESAMPLERS:
        raise ValueError(f"resampler {resampler!r}; expected one of {audio.RESAMPLERS}")
    if fade not in audio.FADE_MODES:
        raise ValueError(f"fade {fade!r}; expected one of {audio.FADE_MODES}")
    return resampler, fade


def _schema(dataset: str, root, schema):
    """``schema`` or the dataset's own: fixed, or read from its data (a manifest's CSV)."""
    if schema is not None:
        return schema
    return sources.get(dataset).describe(root)[0]


def builder(dataset: str, root, *, data_dir=None, skip_bad: bool = False, workers: int = 0,
            schema=None, sample_rate: int = audio.SAMPLE_RATE,
            resampler: str = audio.RESAMPLER, fade: str = audio.FADE_MODE):
    """The TFDS builder of ``dataset`` whose config name is the fingerprint of ``root`` (and
    of the preparation: ``sample_rate``, the rate its cycles are resampled to with
    ``resampler``, and ``fade``)."""
    import tensorflow_datasets as tfds

    sources.get(dataset)   # an unknown name fails here, naming the known ones
    schema = _schema(dataset, root, schema)
    data_dir = prepared_copies.data_dir_path(data_dir)
    config = tfds.core.BuilderConfig(name=prepared_copies.config_name(
                                         dataset, root, data_dir, schema=schema,
                                         sample_rate=sample_rate,
                                         preparation=prepared_copies.preparation_key(
                                             *_preparation(resampler, fade))),
                                     version=FORMAT_VERSION,
                                     description=f"prepared from {root}")
    cls = _builder_class(dataset)
    # TFDS warns about every config not declared in the class: ours never are, by design.
    # The logger's own level, not the --verbosity flag's, is restored: a level set on the
    # logger directly (pytest's caplog) would otherwise be lost.
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    absl_logger.setLevel(logging.converter.absl_to_standard(logging.ERROR))
    try:
        return cls(data_dir=data_dir, config=config, root=root, schema=schema,
                   skip_bad=skip_bad, workers=workers, sample_rate=sample_rate,
                   resampler=resampler, fade=fade)
    finally:
        absl_logger.setLevel(level)


def load(dataset: str, root, *, data_dir=None, skip_bad: bool = False,
         workers: int = 0, schema=None, sample_rate: int = audio.SAMPLE_RATE,
         resampler: str = audio.RESAMPLER, fade: str = audio.FADE_MODE,
         splits=None) -> Prepared:
    """The prepared ``dataset`` of ``root``: built on first use, read from the cache after.

    ``sample_rate``: the rate the cycles are resampled to (``data.sample_rate``: 16 kHz, or
    48 kHz for CLAP's front end) with ``resampler`` (`audio.resample`), and ``fade``: where
    their fades go (`audio.cycles`) (``data.resampler``, ``data.fade``); each preparation a
    copy of its own.

    ``root``: a manifest's CSV. ``schema``: the classes and field values the codes follow
    (the run's config, `metadata.schema`); default: the dataset's own. ``splits``: the
    prepared splits to read (a protocol's `Protocol.reads`); default: the dataset's splits.

    Bad items raise `DataError` naming the file unless ``skip_bad``; then they are listed in
    ``Prepared.skipped`` (also on cached loads). A cache built with skipping is not used
    silently by a run that does not skip: that run gets the first skipped item's error.
    """
    import tensorflow_datasets as tfds

    source = sources.get(dataset)
    root = source.check_root(root)
    schema = _schema(dataset, root, schema)
    manual = source.manual_dir(root)
    how = {"sample_rate": sample_rate, "resampler": resampler, "fade": fade}
    b = builder(dataset, root, data_dir=data_dir, skip_bad=skip_bad, workers=workers,
                schema=schema, **how)
    if not b.is_prepared():
        logging.info("preparing %s from %s into %s (decoding and resampling once)", dataset,
                     root, b.data_dir)
        t = time.perf_counter()
        try:
            b.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual)))
        except OSError:
            # Another process (a second host on a shared data_dir) may have finished the
            # same copy first; TFDS then cannot move ours into place.
            if not builder(dataset, root, data_dir=data_dir, schema=schema,
                           **how).is_prepared():
                raise
        logging.info("prepared %s in %.1f s", dataset, time.perf_counter() - t)
        b = builder(dataset, root, data_dir=data_dir, skip_bad=skip_bad, workers=workers,
                    schema=schema, **how)
        prepared_copies.remove_older(dataset, root, b.data_dir, data_dir,
                                     b.info.metadata.get("schema"), sample_rate,
                                     b.info.metadata["audio"])
    else:
        logging.info("reading prepared %s from %s", dataset, b.data_dir)
    skipped = [records.Skipped(**s) for s in b.info.metadata.get("skipped", [])]
    if skipped and not skip_bad:
        first = skipped[0]
        raise records.DataError(
            first.path, f"{first.reason} ({len(skipped)} bad item(s) in {root}; set "
                        "data.skip_bad to skip them)", first.line)
    names = splits or source.splits or sorted(b.info.splits, key=lambda s: (s != "train", s))
    splits = {s: _read_split(b, s, schema.stored_fields) for s in names}
    return Prepared(dataset=dataset, root=str(root), splits=splits, skipped=skipped,
                    schema=schema)


def _read_split(b, split: str, fields: tuple) -> Split:
    import tensorflow as tf

    n = b.info.splits[split].num_examples if split in b.info.splits else 0
    rows = []
    if n:
        ds = b.as_dataset(split=split, shuffle_files=False)
        rows = list(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
        rows.sort(key=lambda r: int(r["order"]))
    codes = {f: np.array([r[f] for r in rows], np.int32).reshape(-1) for f in fields}
    return Split(audio=[r["audio"] for r in rows], codes=codes,
                 stem=[r["stem"].decode() for r in rows],
                 patient=[r["patient"].decode() for r in rows],
                 index=np.array([r["index"] for r in rows], np.int32).reshape(-1),
                 start=np.array([r["start"] for r in rows], np.float64).reshape(-1),
                 end=np.array([r["end"] for r in rows], np.float64).reshape(-1))


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    if not f.clean:
        raise SystemExit("nothing to do: pass --clean (datasets are prepared by the first run "
                         "that uses them)")
    prepared_copies.clean(f.data_dir, dry_run=f.dry_run)


if __name__ == "__main__":
    # python -m resp_jax.data.prepare --clean [--data_dir=DIR] [--dry_run]: removes the prepared
    # copies that a newer one of the same root replaced (or that an older format wrote).
    from absl import app, flags

    flags.DEFINE_bool("clean", False, "Remove stale prepared copies.")
    flags.DEFINE_string("data_dir", None, f"Prepared datasets (default {DEFAULT_DATA_DIR}; "
                        "the runs' --config.data.tfds_dir).")
    flags.DEFINE_bool("dry_run", False, "List the stale copies without removing them.")
    app.run(main)
