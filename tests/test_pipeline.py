"""The tf.data pipeline: features, normalisation, SpecAugment statistics, determinism, resume,
padding and multi-host slicing (docs/method.md §2.3-2.6)."""

import librosa
import numpy as np
import pytest
from ml_collections import ConfigDict

from resp_jax.data import audio, feature_store, features, metadata, pipeline, prepare

SR = 16000
MEAN, STD = 0.3690, 0.0255


def make_config(**over):
    """The config fields the pipeline reads (configs/base.py holds the real ones)."""
    cfg = ConfigDict({
        "data": {"duration": 2.0, "pad": "circular", "sample_rate": SR, "norm": "reference",
                 "norm_mean": MEAN, "norm_std": STD},
        "augment": {"prob": 0.84, "apply_per": "example", "freq_masks": 2, "freq_width": 20,
                    "time_masks": 2, "time_width": 40},
        "train": {"seed": 0, "batch_size": 4},
    })
    for key, value in over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def make_split(n, seed):
    """n distinct noisy cycles of 0.3-3 s with varied metadata codes."""
    rng = np.random.default_rng(seed)
    waves = []
    for i in range(n):
        length = int(rng.integers(int(0.3 * SR), 3 * SR))
        t = np.arange(length) / SR
        w = rng.standard_normal(length) * 0.05 + 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t)
        waves.append(audio.cut(w.astype(np.float32), 0, length / SR))
    codes = {
        "label": np.arange(n) % 4,
        "sex": np.array([0, 1, -1])[np.arange(n) % 3],
        "age_group": (np.arange(n) // 2) % 2,
        "device": np.arange(n) % 4, "location": np.arange(n) % 7, "mode": np.arange(n) % 2,
        "diagnosis": np.arange(n) % 8,
    }
    return prepare.Split(audio=waves, codes={k: v.astype(np.int32) for k, v in codes.items()},
                         stem=[f"{900 + i}_1b1_Al_sc_Meditron" for i in range(n)],  # not in
                         # the reference order: evaluation keeps the prepared order
                         patient=[str(100 + i // 2) for i in range(n)],
                         index=np.zeros(n, np.int32))


@pytest.fixture(scope="module")
def prepared():
    return prepare.Prepared(dataset="icbhi", root="/nowhere",
                            splits={"train": make_split(13, 0), "test": make_split(6, 1)},
                            skipped=[])


@pytest.fixture(scope="module")
def feats(prepared):
    return feature_store.Features(prepared, make_config())


def librosa_logmel(wave):
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=SR, n_fft=1024, hop_length=512, center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=2000, htk=True, norm=None)
    return 10 * np.log10(np.maximum(mel, 1e-10))


def minmax_standardise(x, mean=MEAN, std=STD):
    return ((x - x.min()) / (x.max() - x.min()) - mean) / std


def row_of(view, x_all, mean=MEAN, std=STD):
    """Which feature row an unaugmented view came from (min-max is affine per batch)."""
    z = (view * std + mean).ravel()
    corr = [np.corrcoef(z, r.ravel())[0, 1] for r in x_all]
    assert max(corr) > 0.999999
    return int(np.argmax(corr))


# ---------------------------------------------------------------- features


def test_features_are_logmel_of_fitted_cycles(prepared, feats):
    assert feats.frames == 63 and feats["train"].x.shape == (13, 64, 63)
    for i in (0, 5, 12):
        ref = librosa_logmel(audio.fit(prepared["train"].audio[i], 2 * SR, "circular"))
        np.testing.assert_allclose(feats["train"].x[i], ref, atol=0.01)
    zero = feature_store.Features(prepared, make_config(data__pad="zero", data__duration=1.5))
    assert zero.frames == 1 + 24000 // 512
    ref = librosa_logmel(audio.fit(prepared["test"].audio[2], 24000, "zero"))
    np.testing.assert_allclose(zero["test"].x[2], ref, atol=0.01)


def test_features_reject_other_sample_rates(prepared):
    with pytest.raises(ValueError, match="sample_rate"):
        feature_store.Features(prepared, make_config(data__sample_rate=8000))


# ---------------------------------------------------------------- evaluation batches


def test_eval_batches_in_order_padded_and_normalised(prepared, feats):
    batches = list(pipeline.eval_batches(feats, make_config(), "test",
                                         fields=("label", "sex+age_group"), global_batch=4))
    assert len(batches) == pipeline.num_batches(6, 4) == 2
    x = feats["test"].x
    sa = metadata.combine("icbhi", "sex+age_group", prepared["test"].codes)
    for b, rows in zip(batches, (slice(0, 4), slice(4, 6))):
        real = len(range(6)[rows])
        assert set(b) == {"x", "label", "sex+age_group", "mask"}
        assert b["x"].shape == (4, 64, 63) and b["x"].dtype == np.float32
        np.testing.assert_array_equal(b["mask"], [1] * real + [0] * (4 - real))
        # Min-max over the batch's real examples only, then the reference constants.
        np.testing.assert_allclose(b["x"][:real], minmax_standardise(x[rows]), atol=2e-4)
        assert (b["x"][real:] == 0).all()
        np.testing.assert_array_equal(b["label"][:real], prepared["test"].label[rows])
        np.testing.assert_array_equal(b["sex+age_group"][:real], sa[rows])
        assert (b["label"][real:] == -1).all() and (b["sex+age_group"][real:] == -1).all()
        assert b["label"].dtype == np.int32


def test_dataset_normalisation_matches_the_inputs_the_step_receives(feats):
    """data.norm='dataset': the statistics are those of the training inputs as the step gets
    them (each batch min-maxed on its own), so the standardised inputs have mean 0, std 1."""
    cfg = make_config(data__norm="dataset", augment__prob=0.0)
    mean, std = pipeline.norm_constants(feats, cfg)
    views = [b["view1"][b["mask"] > 0] for b in pipeline.train_batches(feats, cfg, epoch=0,
                                                                          global_batch=4)]
    x = np.concatenate(views).astype(np.float64)
    assert abs(x.mean()) < 1e-4 and x.std() == pytest.approx(1.0, abs=1e-4)
    # ... which a min-max over the whole split (the old statistics) does not give
    z = feats["train"].x.astype(np.float64)
    z = (z - z.min()) / (z.max() - z.min())
    assert abs(mean - z.mean()) > 10 * 1e-4 * std


def test_evaluation_batches_follow_the_prepared_order_or_the_given_one():
    """Evaluation batches list a split's cycles in the prepared order (the reader's: for ICBHI
    the reference code's, test_icbhi), or in the order given (the linear stage's shuffle)."""
    n = 5
    x = np.random.default_rng(0).normal(size=(n, 64, 8)).astype(np.float32)
    codes = {f: np.zeros(n, np.int32) for f in metadata.BASE_FIELDS}
    codes["label"] = np.array([3, 1, 0, 2, 1], np.int32)
    f = feature_store.Features.from_splits("icbhi", {"test": feature_store.SplitFeatures.of(
        x, codes, stem=[f"10{i}_1b1_Al_sc_Meditron" for i in range(n)])}, 8 * 512 - 512)
    b = next(pipeline.eval_batches(f, make_config(), "test", global_batch=8))
    np.testing.assert_array_equal(b["label"][:n], codes["label"])
    order = np.array([4, 0, 3, 1, 2], np.int32)
    b = next(pipeline.eval_batches(f, make_config(), "test", global_batch=8, order=order))
    np.testing.assert_array_equal(b["label"][:n], codes["label"][order])


def _epoch(feats, cfg, epoch, **kw):
    kw.setdefault("global_batch", 4)
    return list(pipeline.train_batches(feats, cfg, epoch=epoch, **kw))


def test_each_epoch_is_a_shuffled_cover_of_the_training_split(prepared, feats):
    cfg = make_config(augment__prob=0.0)
    orders = []
    for epoch in (0, 1):
        batches = _epoch(feats, cfg, epoch, fields=("label", "sex"))
        assert len(batches) == 4
        rows = []
        for b in batches:
            np.testing.assert_array_equal(b["view1"], b["view2"])  # prob 0: no masks
            for k in range(4):
                if b["mask"][k]:
                    r = row_of(b["view1"][k], feats["train"].x)
                    assert b["label"][k] == prepared["train"].label[r]
                    assert b["sex"][k] == prepared["train"].codes["sex"][r]
                    rows.append(r)
        assert sorted(rows) == list(range(13))
        orders.append(rows)
    assert orders[0] != orders[1]
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 0, 0, 0])  # 13 = 3*4 + 1
    assert (batches[-1]["view1"][1:] == 0).all() and (batches[-1]["label"][1:] == -1).all()


def test_minmax_uses_real_examples_of_the_padded_batch(feats):
    cfg = make_config(augment__prob=0.0)
    for b in _epoch(feats, cfg, 3, global_batch=5):   # 13 = 2*5 + 3
        z = b["view1"][b["mask"] == 1] * STD + MEAN
        assert z.min() == pytest.approx(0.0, abs=1e-5)
        assert z.max() == pytest.approx(1.0, abs=1e-5)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _differs(a, b):
    return any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_deterministic_in_seed_and_epoch(feats):
    cfg = make_config()
    first = _epoch(feats, cfg, 2)
    _assert_same(first, _epoch(feats, cfg, 2))
    _assert_same(first, _epoch(feature_store.Features.from_splits("icbhi", feats.splits, 2 * SR),
                               cfg, 2))
    assert _differs(first, _epoch(feats, cfg, 3))
    assert _differs(first, _epoch(feats, make_config(train__seed=1), 2))


def test_skip_batches_replays_the_rest_of_the_epoch(feats):
    cfg = make_config()
    full = _epoch(feats, cfg, 5)
    _assert_same(full[2:], _epoch(feats, cfg, 5, skip_batches=2))
    assert _epoch(feats, cfg, 5, skip_batches=len(full)) == []


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_hosts_reassemble_the_global_batch(feats, kind):
    cfg = make_config()

    def run(index, count):
        if kind == "train":
            return _epoch(feats, cfg, 1, fields=("label", "sex+age_group"), global_batch=6,
                          process_index=index, process_count=count)
        return list(pipeline.eval_batches(feats, cfg, "train", fields=("label",),
                                          global_batch=6, process_index=index,
                                          process_count=count))

    whole = run(0, 1)
    parts = [run(i, 3) for i in range(3)]
    for p in parts:
        assert all(len(b["mask"]) == 2 for b in p)
    joined = [{k: np.concatenate([p[i][k] for p in parts]) for k in whole[i]}
              for i in range(len(whole))]
    _assert_same(whole, joined)
    with pytest.raises(ValueError, match="divisible"):
        run(0, 4)


# ---------------------------------------------------------------- SpecAugment


def _reference_mask_counts(size, count, width, n, rng):
    """Monte Carlo of docs/method.md §2.6, written independently: masked bins of `count` masks."""
    hit = np.zeros((n, size), bool)
    idx = np.arange(size)
    for _ in range(count):
        v = rng.random(n) * width
        start = np.floor(rng.random(n) * (size - v))
        hit |= (idx >= start[:, None]) & (idx < start[:, None] + np.floor(v)[:, None])
    return hit.sum(axis=1)


def _runs(flags):
    """Lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    d = np.diff(padded)
    return np.nonzero(d == -1)[0] - np.nonzero(d == 1)[0]


def _mask_draws(apply_per, global_batch):
    """Masks of 2 x 2000 views over flat features (every cell 0.5 after the min-max, except
    the min cell (0, 0) and the max cell (0, 1)), so a masked cell is exactly the fill value."""
    n, frames = 2000, 94                                 # 3 s
    x = np.full((n, 64, frames), 1.0, np.float32)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 2.0
    codes = {f: np.zeros(n, np.int32) for f in metadata.BASE_FIELDS}
    f = feature_store.Features.from_splits("icbhi", {"train": feature_store.SplitFeatures.of(x, codes)},
                                      3 * SR)
    out = {"view1": [], "view2": []}
    for b in pipeline.train_batches(f, make_config(augment__apply_per=apply_per), epoch=0,
                                    global_batch=global_batch):
        for v in out:
            out[v].append(b[v])
    views = np.stack([np.concatenate(out["view1"]), np.concatenate(out["view2"])], axis=1)
    fill, keep = (0.0 - MEAN) / STD, (0.5 - MEAN) / STD
    body = views.copy()
    body[:, :, 0, :2] = keep                                 # the extreme cells say nothing
    assert np.all(np.isclose(body, fill, atol=1e-3) | np.isclose(body, keep, atol=1e-3))
    return np.isclose(body, fill, atol=1e-3)                 # [n, 2, 64, T] masked


@pytest.fixture(scope="module")
def mask_draws():
    return _mask_draws("example", 500)


def test_specaugment_applies_per_batch_and_view_by_default():
    """augment.apply_per='batch' (the reference's `p > torch.randn(1)`): a view of a batch is
    augmented everywhere or nowhere, with probability 0.84 per batch and view, while the
    masks' positions and widths are still drawn per example."""
    m = _mask_draws("batch", 20)                              # 100 batches x 2 views
    fcount = m[..., 2:].all(axis=-1).sum(-1)                  # [n, 2]
    tcount = m[..., 1:, :].all(axis=-2).sum(-1)
    applied = ((fcount + tcount) > 0).reshape(100, 20, 2)
    # all-or-nothing per batch and view (an applied block is invisible w.p. 1/640000 per row)
    per_batch = applied.mean(axis=1)                          # [100, 2]
    assert np.isin(per_batch, [0.0, 1.0]).all()
    on = per_batch > 0.5
    assert abs(on.mean() - 0.84) < 0.1                        # binomial sd 0.026 over 200
    assert (on[:, 0] != on[:, 1]).any()                       # the two views draw apart
    rows = m.reshape(100, 20, 2, -1)[on[:, 0], :, 0]          # applied view-1 batches
    assert all(len({r.tobytes() for r in batch}) > 15 for batch in rows)

@pytest.mark.parametrize("frontend", ["logmel", "beats"])
@pytest.mark.parametrize("fill", ["min", "mean"])
def test_specaugment_fill_is_the_batch_minimum_or_the_examples_mean(fill, frontend):
    """augment.fill: 'min' (the reference) puts the batch's minimum in a mask (0 of the batch
    min-max on log-mel; fbank, never min-maxed: the batch's lowest normalised value), 'mean'
    the example's own mean on that scale; log-mel is then standardised."""
    n = 16
    bins, frames = features.frontend_shape(frontend, 3 * SR)
    rng = np.random.default_rng(3)
    x = (rng.uniform(0, 1, (n, bins, frames)) + np.arange(n)[:, None, None]).astype(np.float32)
    codes = {f: np.zeros(n, np.int32) for f in metadata.BASE_FIELDS}
    f = feature_store.Features.from_splits(
        "icbhi", {"train": feature_store.SplitFeatures.of(x, codes)}, 3 * SR, frontend=frontend)
    config = make_config(augment__prob=1.0, augment__fill=fill)
    b = next(pipeline.train_batches(f, config, epoch=0, global_batch=n))
    order = np.random.default_rng([0, 0]).permutation(n)       # the epoch's shuffle
    if frontend == "logmel":
        mean, std = MEAN, STD
        scaled = (x[order] - x.min()) / (x.max() - x.min())
    else:  # normalised with BEATs' constants, masked after that
        mean, std = 0.0, 1.0
        scaled = (x[order] - features.BEATS_MEAN) / (2 * features.BEATS_STD)
    clean = (scaled - mean) / std
    for v in ("view1", "view2"):
        masked = ~np.isclose(b[v], clean, atol=1e-4)
        assert masked.mean() > 0.1
        value = scaled.min() if fill == "min" else scaled.mean(axis=(1, 2))[:, None, None]
        want = np.broadcast_to((value - mean) / std, clean.shape)
        np.testing.assert_allclose(b[v][masked], want[masked], rtol=1e-4, atol=1e-3)


def test_specaugment_masks_are_bands_with_spec_widths(mask_draws):
    m = mask_draws
    fmask = m[..., 2:].all(axis=-1)            # [n, 2, 64]: freq bins masked across time
    tmask = m[..., 1:, :].all(axis=-2)         # [n, 2, T]
    # Every masked cell is explained by a frequency band or a time band (fill 0 = min).
    explained = fmask[..., :, None] | tmask[..., None, :]
    explained[..., 0, :2] = m[..., 0, :2]      # the two extreme cells were overwritten
    np.testing.assert_array_equal(m, explained)
    for masks, width in ((fmask, 20), (tmask, 40)):
        flat = masks.reshape(-1, masks.shape[-1])
        for row in flat:
            runs = _runs(row)
            assert len(runs) <= 2 and runs.sum() <= 2 * (width - 1)
        assert flat.sum(axis=1).max() > width - 1    # overlapping pairs do happen


def test_specaugment_probability_and_width_statistics(mask_draws):
    m = mask_draws
    fcount = m[..., 2:].all(axis=-1).sum(-1).ravel()
    tcount = m[..., 1:, :].all(axis=-2).sum(-1).ravel()
    applied = (fcount + tcount) > 0
    # A drawn block is invisible only if all four widths are 0 (probability 1/640000).
    p = applied.mean()
    assert abs(p - 0.84) < 0.025, p          # binomial sd 0.0058 over 4000 views: 4.3 sd
    rng = np.random.default_rng(0)
    for counts, size, width in ((fcount, 64, 20), (tcount, 94, 40)):
        ref = _reference_mask_counts(size, 2, width, 200_000, rng)
        got = counts[applied]
        sd = ref.std() / np.sqrt(len(got))
        assert abs(got.mean() - ref.mean()) < 4.5 * sd, (got.mean(), ref.mean(), sd)
        assert abs((got == 0).mean() - (ref == 0).mean()) < 0.02


def test_specaugment_draws_are_independent(mask_draws):
    m = mask_draws
    fcount = m[..., 2:].all(axis=-1).sum(-1)           # [n, 2]
    tcount = m[..., 1:, :].all(axis=-2).sum(-1)
    applied = (fcount + tcount) > 0
    n = len(applied)
    # Two views of a cycle: independent draws (agreement of the apply flags p^2 + (1-p)^2).
    agree = (applied[:, 0] == applied[:, 1]).mean()
    assert abs(agree - (0.84**2 + 0.16**2)) < 0.04
    for a, b in ((fcount[:, 0], fcount[:, 1]), (tcount[:, 0], tcount[:, 1]),
                 (fcount[:-1, 0], fcount[1:, 0]), (tcount[:-1, 1], tcount[1:, 1])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(n)   # views; neighbours in a batch
    # Patterns are not repeated across examples of a batch or across views.
    pats = m[:500, 0].reshape(500, -1)
    both = applied[:500, 0]
    assert len({p.tobytes() for p in pats[both]}) > 0.95 * both.sum()
    assert (m[:, 0] != m[:, 1]).any(axis=(1, 2)).mean() > 0.7


# ---------------------------------------------------------------- class weights


def test_class_counts_and_weights(prepared):
    np.testing.assert_array_equal(pipeline.class_counts(prepared, "train"), [4, 3, 3, 3])
    w = pipeline.class_weights([2063, 1215, 501, 363])    # ICBHI official train (docs/method.md §4)
    np.testing.assert_allclose(w, [0.0800, 0.1358, 0.3295, 0.4547], atol=1.5e-4)
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(pipeline.class_weights([2, 0, 2]), [0.5, 0, 0.5])


def test_num_batches():
    assert [pipeline.num_batches(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_linear_batches_regroup_the_training_split_every_epoch(feats):
    """The reference's linear stage: each epoch shuffles the training split anew and each
    batch is min-maxed over its own real examples, so the same cycle gets other inputs."""
    cfg = make_config()
    x = feats["train"].x.reshape(len(feats["train"]), -1).astype(np.float64)
    lo, hi = (-MEAN) / STD, (1 - MEAN) / STD
    groups = {}
    for epoch in (1, 2):
        batches = list(pipeline.linear_batches(feats, cfg, epoch=epoch, global_batch=4))
        assert [int(b["mask"].sum()) for b in batches] == [4, 4, 4, 1]
        assert all(set(b) == {"x", "label", "mask"} for b in batches)
        grouping = []
        for b in batches:
            real = b["x"][b["mask"] > 0].reshape(int(b["mask"].sum()), -1)
            # min-max over this batch's examples, then the reference constants
            assert real.min() == pytest.approx(lo, abs=1e-3)
            assert real.max() == pytest.approx(hi, abs=1e-3)
            # each row is an affine image of one training cycle: find which
            grouping.append(frozenset(int(np.argmax([np.corrcoef(r, xj)[0, 1] for xj in x]))
                                      for r in real))
        assert sorted(i for g in grouping for i in g) == list(range(len(x)))
        groups[epoch] = grouping
    assert groups[1] != groups[2]
