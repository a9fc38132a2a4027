"""From the features (`feature_store`) to batches: per epoch shuffle, two-view SpecAugment
and normalisation in tf.data, yielded as numpy dicts.

docs/method.md §2.3-2.6; the fbank front end and the Patch-Mix SpecAugment policy §9.
Log-mel batches are min-maxed over the batch, then standardised with ``norm_constants``;
fbank batches are normalised with AST's AudioSet constants, (x + 4.27) / (2 x 4.57), and never
min-maxed (AST's dataloader and Patch-Mix's icbhi_util.py). Everything random is a pure
function of (config.train.seed, epoch, batch index): the order comes from a numpy Generator
seeded with (seed, epoch), the masks from stateless TF random ops, so a resumed run replays an
epoch exactly and every host sees the same global batches (each host yields its own rows).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from resp_jax.data import features
from resp_jax.data.feature_store import FEATURE_CHUNK, Features

NORMS = ("reference", "dataset")  # data.norm: fixed constants | statistics of the inputs
APPLY_PER = ("batch", "example")  # augment.apply_per: who draws whether SpecAugment applies
POLICIES = ("reference", "patchmix")  # augment.policy: mask placement, fill and position
FILLS = ("min", "mean")  # augment.fill ('reference' policy): the batch minimum | example's mean


def num_batches(n: int, global_batch: int) -> int:
    """Batches of an epoch over ``n`` cycles; the last partial one is padded, never dropped."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    return -(-int(n) // int(global_batch))


def class_counts(prepared, split: str) -> np.ndarray:
    """Cycles per class in ``split`` of a `prepare.Prepared` (or `Features`)."""
    labels = np.asarray(prepared[split].label)
    c = len(prepared.schema.classes)
    return np.bincount(labels[labels >= 0], minlength=c).astype(np.int64)


def class_weights(counts) -> np.ndarray:
    """1 / class frequency, normalised to sum 1 (docs/method.md §4); absent classes get weight 0."""
    counts = np.asarray(counts, np.float64)
    if not (counts > 0).any():
        raise ValueError(f"class counts {counts.tolist()} hold no example")
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return (inv / inv.sum()).astype(np.float32)


def norm_constants(feats: Features, config) -> tuple:
    """(mean, std) of the standardisation after the batch min-max (docs/method.md §2.5); for
    fbank features AST's AudioSet mean and twice its std (docs/method.md §9), BEATs' for
    'beats' (§10)."""
    fixed = features.fixed_norm(getattr(feats, "frontend", "logmel"))
    if fixed is not None:
        return fixed
    mode = str(config.data.norm)
    if mode == "reference":
        return float(config.data.norm_mean), float(config.data.norm_std)
    if mode == "dataset":
        return dataset_norm(feats, config)
    raise ValueError(f"config.data.norm={mode!r}; expected one of {NORMS}")


def dataset_norm(feats: Features, config) -> tuple:
    """(mean, std) of the training inputs as the train step receives them before the
    standardisation: the first epoch's shuffled batches of ``train.batch_size``, each min-maxed
    over its real examples (docs/method.md §2.5), without SpecAugment's masks."""
    s = feats["train"]
    if not len(s):
        raise ValueError(f"{feats.dataset}: no training cycles to compute statistics from")
    order = np.random.default_rng([int(config.train.seed), 0]).permutation(len(s))
    total = total_sq = 0.0
    for rows in _row_table(order.astype(np.int32), int(config.train.batch_size)):
        rows = rows[rows >= 0]
        lo, hi = float(s.lo[rows].min()), float(s.hi[rows].max())
        scale = 1.0 / max(hi - lo, 1e-12)
        for a in range(0, len(rows), FEATURE_CHUNK):
            z = (s.x[np.sort(rows[a:a + FEATURE_CHUNK])].astype(np.float64) - lo) * scale
            total += z.sum()
            total_sq += np.square(z).sum()
    count = s.x.size
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def _local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the "
                         f"{process_count} processes")
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _row_table(order: np.ndarray, global_batch: int) -> np.ndarray:
    """[num_batches, global_batch] row indices, -1 marking the padding of the last batch."""
    nb = num_batches(len(order), global_batch)
    rows = np.full(nb * global_batch, -1, np.int32)
    rows[:len(order)] = order
    return rows.reshape(nb, global_batch)


def _label_table(feats: Features, split: str, fields: Sequence[str]) -> tuple:
    names = ["label"] + [f for f in fields if f != "label"]
    cols = [feats.field(split, f) for f in names]
    table = np.stack(cols, axis=1).astype(np.int32) if len(feats[split]) else \
        np.zeros((0, len(names)), np.int32)
    return names, table


def _spec_masks(u, n_freq: int, n_time: int, freq_masks: int, freq_width: int,
                time_masks: int, time_width: int, policy: str = "reference"):
    """(frequency hits [..., F], time hits [..., T]) (bool: masked) from uniforms ``u``
    [..., 1 + 2 * (freq_masks + time_masks)] (``u[..., 0]`` unused here).

    Each mask's width is floor(U * W), uniform in [0, W). Its start: 'reference' (torchaudio's
    masking, the SCL code) floor(U' * (size - U * W)); 'patchmix' (the Patch-Mix code's
    ``random.randint(0, size - width)``) uniform among the integers 0 .. size - width.
    """
    import tensorflow as tf

    k = 1

    def band(size, count, width):
        nonlocal k
        idx = tf.range(size, dtype=tf.float32)
        hit = tf.zeros(tf.concat([tf.shape(u)[:-1], [size]], 0), tf.bool)
        for _ in range(count):
            v = u[..., k] * width
            if policy == "patchmix":
                v = tf.floor(v)
                start = tf.maximum(tf.floor(u[..., k + 1] * (size - v + 1.0)), 0.0)
            else:
                start = tf.floor(u[..., k + 1] * (size - v))
            stop = start + tf.floor(v)
            k += 2
            hit = hit | ((idx >= start[..., None]) & (idx < stop[..., None]))
        return hit

    return (band(n_freq, freq_masks, float(freq_width)),
            band(n_time, time_masks, float(time_width)))


def _augment(x, fhit, thit, apply, policy: str, fill: str = "min", floor=0.0):
    """One view of ``x`` [L, F, T] masked where ``apply`` [L].

    'reference' fills every mask with the batch's minimum ``floor`` (``fill='min'``, the SCL
    code: torchaudio's mask value 0 before the standardisation, i.e. 0 on the
    batch-min-maxed log-mel scale; for fbank, never min-maxed, the batch's lowest normalised
    value), or with the example's mean (``fill='mean'``), so that a mask removes
    what it covers without drawing an edge at the quietest level of the batch (on small sets
    the minimum fill makes SupCon learn the patients instead of the classes:
    docs/benchmarks.md, "Two-stage methods on small sets"). 'patchmix' fills the frequency
    masks with the example's mean, then the time masks with the mean of the result (the
    Patch-Mix code's ``--specaug_mask mean``)."""
    import tensorflow as tf

    on = apply[:, None, None]
    fmask = fhit[:, :, None] & on
    tmask = thit[:, None, :] & on
    if policy != "patchmix":
        value = floor if fill == "min" else tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        return tf.where(fmask | tmask, value, x)
    x = tf.where(fmask, tf.reduce_mean(x, axis=[1, 2], keepdims=True), x)
    return tf.where(tmask, tf.reduce_mean(x, axis=[1, 2], keepdims=True), x)


def _batches(feats: Features, split: str, rows: np.ndarray, *, names, table, mean, std,
             local: slice, augment=None, seed=None, epoch=0, skip=0) -> Iterator[dict]:
    """The tf.data pipeline shared by training and evaluation batches."""
    import tensorflow as tf

    s = feats[split]
    xvar = feats.variable(split) if len(s) else None
    lo = tf.constant(s.lo if len(s) else np.zeros(1, np.float32))
    hi = tf.constant(s.hi if len(s) else np.zeros(1, np.float32))
    labels = tf.constant(table if len(s) else np.zeros((1, len(names)), np.int32))
    n_freq, n_time = feats.input_shape
    fbank = features.fixed_norm(getattr(feats, "frontend", "logmel")) is not None
    if augment is not None:
        n_draws = 1 + 2 * (int(augment.freq_masks) + int(augment.time_masks))
        prob = float(augment.prob)
        policy = str(augment.get("policy", "reference"))
        fill = str(augment.get("fill", "min"))
        base_seed = tf.constant([int(seed), int(epoch)], tf.int64)

    def standardise(v):
        return (v - mean) / std

    def make(b, r):
        real = r >= 0
        safe = tf.maximum(r, 0)
        rl, real_l = safe[local], real[local]
        keep_row = tf.cast(real_l, tf.float32)[:, None, None]
        mn = tf.reduce_min(tf.where(real, tf.gather(lo, safe), np.inf))  # the global batch's
        if fbank:  # AST, BEATs, HTS-AT: fixed constants, never min-maxed
            x, late, floor = standardise(tf.gather(xvar, rl)), False, standardise(mn)
        else:      # min-max over the global batch, standardised after the masks
            floor = 0.0
            mx = tf.reduce_max(tf.where(real, tf.gather(hi, safe), -np.inf))
            x, late = (tf.gather(xvar, rl) - mn) * (1.0 / tf.maximum(mx - mn, 1e-12)), True
        out = {"mask": tf.cast(real_l, tf.float32)}
        lab = tf.where(real_l[:, None], tf.gather(labels, rl), -1)
        for i, name in enumerate(names):
            out[name] = lab[:, i]
        if augment is None:
            out["x"] = (standardise(x) if late else x) * keep_row
            return out
        if policy == "patchmix" and late:  # Patch-Mix masks the normalised input
            x, late = standardise(x), False
        batch_seed = tf.random.experimental.stateless_fold_in(base_seed, b, alg="philox")
        u = tf.random.stateless_uniform([rows.shape[1], 2, n_draws], batch_seed,
                                        alg="philox")[local]
        if augment.apply_per == "batch":  # one draw per batch and view (the reference)
            view_seed = tf.random.experimental.stateless_fold_in(batch_seed, 1, alg="philox")
            apply = tf.random.stateless_uniform([2], view_seed, alg="philox")[None, :] < prob
            apply = tf.broadcast_to(apply, tf.shape(u)[:2])
        else:  # one draw per example and view
            apply = u[..., 0] < prob
        fhit, thit = _spec_masks(u, n_freq, n_time, int(augment.freq_masks),
                                 int(augment.freq_width), int(augment.time_masks),
                                 int(augment.time_width), policy)  # [L, 2, F], [L, 2, T]
        for v in range(2):
            view = _augment(x, fhit[:, v], thit[:, v], apply[:, v], policy, fill, floor)
            out[f"view{v + 1}"] = (standardise(view) if late else view) * keep_row
        return out

    if not len(rows) or skip >= len(rows):
        return iter(())
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(rows), dtype=np.int64), rows))
    ds = ds.skip(skip).map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # No autotuning: destroying an autotuned iterator waits for the tuner, which took 2.5-8 s
    # at most epoch ends while XLA kept the CPU busy (the training loop stalled there). Without
    # it AUTOTUNE means one map call per core, as fast here (docs/benchmarks.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options).as_numpy_iterator()


def train_batches(feats: Features, config, *, epoch: int, fields: Sequence[str] = ("label",),
                  global_batch: int, skip_batches: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
    """Shuffled two-view training batches of ``epoch``: dicts of numpy arrays.

    ``view1``/``view2`` [B_local, bins, T] float32 (log-mel: batch min-max over the global
    batch's real examples and standardised; fbank: normalised; SpecAugment drawn independently
    per example and view, `augment.policy`), ``label``
    and one int32 [B_local] array per field (-1 unknown or padding), ``mask`` (1 real, 0
    padding). The last batch is padded to ``global_batch``. ``skip_batches`` resumes mid-epoch.
    """
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    seed = int(config.train.seed)
    if seed < 0 or epoch < 0:
        raise ValueError(f"train.seed ({seed}) and epoch ({epoch}) must be >= 0")
    local = _local_rows(global_batch, process_index, process_count)
    n = len(feats["train"])
    order = np.random.default_rng([seed, int(epoch)]).permutation(n).astype(np.int32)
    names, table = _label_table(feats, "train", fields)
    mean, std = norm_constants(feats, config)
    return _batches(feats, "train", _row_table(order, global_batch), names=names, table=table,
                    mean=mean, std=std, local=local, augment=config.augment, seed=seed,
                    epoch=epoch, skip=int(skip_batches))


def eval_batches(feats: Features, config, split: str, *, fields: Sequence[str] = ("label",),
                 global_batch: int, process_index: int = 0, process_count: int = 1,
                 order: np.ndarray | None = None) -> Iterator[dict]:
    """Unaugmented batches of ``split`` in the prepared order (the reader's: for ICBHI the
    reference code's, `icbhi.in_reference_order`), or in ``order``: ``x`` (batch min-max,
    standardised), ``label``, the fields and ``mask``, the last batch padded and masked."""
    local = _local_rows(global_batch, process_index, process_count)
    names, table = _label_table(feats, split, fields)
    mean, std = norm_constants(feats, config)
    order = np.arange(len(feats[split]), dtype=np.int32) if order is None else \
        np.asarray(order, np.int32)
    return _batches(feats, split, _row_table(order, global_batch),
                    names=names, table=table, mean=mean, std=std, local=local)


def linear_batches(feats: Features, config, *, epoch: int, global_batch: int,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """The linear stage's training batches of ``epoch`` (the reference's): the training split
    shuffled anew each epoch (seeded by train.seed and epoch), each batch min-maxed on its own
    and standardised, without augmentation; ``x``, ``label``, ``mask``."""
    order = np.random.default_rng([int(config.train.seed), 1, int(epoch)]).permutation(
        len(feats["train"]))
    return eval_batches(feats, config, "train", global_batch=global_batch,
                        process_index=process_index, process_count=process_count,
                        order=order.astype(np.int32))
