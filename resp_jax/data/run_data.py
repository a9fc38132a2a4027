"""The data side of a run: prepared dataset, optional validation carve, batches on the mesh.

`load(config)` is what `train.train_and_evaluate` calls; the returned `RunData` hides split
names (logical 'train', 'val', 'test' -> the dataset's splits, as the dataset's `Source`
chooses them for the protocol, ``data.protocol``: `Source.protocol_splits`) and process
slicing. `prepared_splits` is the same choice without features (`resp_jax.evaluate`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging

from resp_jax import configuration, parallel, selection
from resp_jax.data import metadata, sources


@dataclasses.dataclass
class RunData:
    name: str                   # dataset
    test_split: str             # the dataset split reported as 'test'
    eval_splits: tuple          # logical splits evaluated each epoch: ('test',) or + 'val'
    num_classes: int
    frames: int                 # feature frames per example (log-mel or fbank)
    class_weights: Any          # [C] float32, or None when CE is unweighted
    skipped: int                # items the readers skipped (data.skip_bad)
    sizes: dict                 # logical split -> number of cycles
    config: Any
    fields: tuple
    features: Any               # feature_store.Features
    norm: tuple                 # (mean, std) of the standardisation after the batch min-max

    def _split(self, split: str) -> str:
        return self.test_split if split == "test" else split

    def num_batches(self, split: str, global_batch: int) -> int:
        from resp_jax.data import pipeline
        return pipeline.num_batches(self.sizes[split], global_batch)

    def train_batches(self, epoch: int, skip: int, mesh) -> Iterator[dict]:
        """Augmented two-view training batches of ``epoch`` (after ``skip`` batches), on the
        mesh; a pure function of (train.seed, epoch)."""
        from resp_jax.data import pipeline
        batches = pipeline.train_batches(
            self.features, self.config, epoch=epoch, fields=self.fields,
            global_batch=self.config.train.batch_size, skip_batches=skip,
            process_index=jax.process_index(), process_count=jax.process_count())
        return parallel.prefetch(batches, mesh)

    @property
    def input_shape(self) -> tuple:
        """(bins, frames) of one example as the model receives it (`Features.input_shape`)."""
        return tuple(self.features.input_shape)

    def linear_batches(self, epoch: int, mesh) -> Iterator[dict]:
        """The linear stage's training batches of ``epoch``: shuffled anew, each min-maxed on
        its own, unaugmented (`pipeline.linear_batches`), on the mesh."""
        from resp_jax.data import pipeline
        batches = pipeline.linear_batches(
            self.features, self.config, epoch=epoch,
            global_batch=self.config.linear_eval.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count())
        return parallel.prefetch(batches, mesh)

    def eval_batches(self, split: str, mesh) -> Iterator[dict]:
        """Unaugmented batches of a logical split in the prepared order, padded and
        masked."""
        from resp_jax.data import pipeline
        batches = pipeline.eval_batches(
            self.features, self.config, self._split(split), fields=self.fields,
            global_batch=self.config.eval.batch_size, process_index=jax.process_index(),
            process_count=jax.process_count())
        return parallel.prefetch(batches, mesh)


def prepared_splits(config, splits=None):
    """The prepared dataset of a resolved ``config`` (made on first use; no ``data.root``:
    the synthetic default) with the splits its protocol chooses (`Source.protocol_splits`:
    ``data.protocol``, ``data.held_out``), or, given ``splits``, only those of them."""
    from resp_jax.data import prepare

    name, root = config.data.name, config.data.root
    if not root:  # the synthetic default (made once, cached; synthetic logs where)
        from resp_jax.data import synthetic
        root = str(synthetic.default_dataset(name))
    source = sources.get(name)
    protocol = source.protocol(config.data.get("protocol", sources.OFFICIAL))
    held_out = config.data.get("held_out", "")
    schema = metadata.schema(config.data)   # classes and field values (configuration.resolve)
    # The official splits asked for are all that is read (a dataset's test set alone).
    only = tuple(splits) if splits is not None and protocol.name == sources.OFFICIAL else None
    prepared = prepare.load(name, root, data_dir=config.data.tfds_dir or None,
                            skip_bad=config.data.skip_bad, schema=schema,
                            sample_rate=int(config.data.sample_rate),
                            resampler=config.data.resampler, fade=config.data.fade,
                            splits=protocol.reads or only)
    if only:
        return prepared
    chosen = source.protocol_splits(prepared.splits, protocol.name, config.data.test_split,
                                    held_out)
    if protocol.name != sources.OFFICIAL:
        logging.info("protocol %s%s: %s", protocol.name,
                     f" (held out: {held_out})" if held_out else "",
                     ", ".join(f"{k} {len(v)} cycles of {len(set(v.patient))} patients"
                               for k, v in chosen.items()))
    if splits is not None:
        chosen = {k: chosen[k] for k in splits}
    return dataclasses.replace(prepared, splits=chosen)


def load(config) -> RunData:
    """Reads (or makes) the dataset of a resolved ``config`` and computes its features."""
    from resp_jax.data import feature_store, pipeline

    name = config.data.name
    schema = metadata.schema(config.data)
    prepared = prepared_splits(config)
    root, test_split = prepared.root, config.data.test_split
    skipped = len(prepared.skipped)
    if skipped:
        logging.warning("%d item(s) skipped (data.skip_bad), e.g. %s", skipped,
                        prepared.skipped[0])
    eval_splits = ("test",)
    if config.eval.selection == "val":
        prepared = carve_val(prepared, config.eval.val_fraction, config.train.seed)
        eval_splits = ("test", selection.VAL_SPLIT)
    sizes = {s: len(prepared[test_split if s == "test" else s]) for s in ("train",) + eval_splits}
    for split, n in sizes.items():
        if n == 0:
            raise ValueError(f"{root}: the {test_split if split == 'test' else split!r} split "
                             f"of this {name} dataset has no cycles; training needs cycles in "
                             "'train' and in the split it reports")
    class_weights = None
    if config.loss.class_weighted:
        class_weights = np.asarray(
            pipeline.class_weights(pipeline.class_counts(prepared, "train")), np.float32)
    features = feature_store.Features(prepared, config)  # features of every cycle, once per run
    frames = int(features.frames)
    logging.info("%s: %s cycles; %s %d x %d per example", name, sizes, features.frontend,
                 features.bins, frames)
    return RunData(name=name, test_split=test_split, eval_splits=eval_splits,
                   num_classes=len(schema.classes), frames=frames,
                   class_weights=class_weights, skipped=skipped, sizes=sizes, config=config,
                   fields=configuration.fields(config), features=features,
                   norm=tuple(float(v) for v in pipeline.norm_constants(features, config)))


def carve_val(prepared, fraction: float, seed: int):
    """A copy of ``prepared`` whose 'train' split lost whole patients to a new 'val' split
    (`selection.val_mask`); the other splits are untouched."""
    from resp_jax.data import prepare

    train = prepared["train"]
    in_val = selection.val_mask(train.patient, fraction, seed)
    splits = dict(prepared.splits)
    splits["train"] = train.take(np.flatnonzero(~in_val))
    splits[selection.VAL_SPLIT] = train.take(np.flatnonzero(in_val))
    logging.info("validation split: %d of %d training cycles (%d patients), seed %d",
                 int(in_val.sum()), len(train), len(set(splits["val"].patient)), seed)
    return prepare.Prepared(dataset=prepared.dataset, root=prepared.root, splits=splits,
                            skipped=prepared.skipped, schema=prepared.schema)
