"""resp_jax/patchmix.py and ASTEncoder's patch mixing against PyTorch (docs/method.md §9).

The PyTorch versions below are written from the definitions in Patch-Mix CL (Bae et al.,
Interspeech 2023) and its code's behaviour: the loss as a weighted log-softmax (positives lam on
the own clean example, 1 - lam on the partner), and the mixing as replacing the chosen patch
embeddings of Hugging Face's ASTModel before the position embedding is added.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from resp_jax import patchmix

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_contrastive(mixed, clean, index, lam, temperature, allowed=None):
    anchors, targets = F.normalize(mixed, dim=1), F.normalize(clean, dim=1)
    sim = anchors @ targets.T / temperature
    if allowed is not None:
        sim = sim.masked_fill(~allowed, float("-inf"))
    log_p = sim.log_softmax(dim=1)
    rows = torch.arange(len(index))
    own = log_p[rows, rows]
    partner = log_p[rows, index]
    return -(lam * own + (1 - lam) * partner).mean()


def _inputs(batch=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    mixed = rng.standard_normal((batch, dim)).astype(np.float32)
    clean = rng.standard_normal((batch, dim)).astype(np.float32)
    index = rng.permutation(batch).astype(np.int32)
    labels = rng.integers(0, 4, batch).astype(np.int32)
    return mixed, clean, index, labels


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("temperature", [0.06, 0.5])
def test_contrastive_loss_matches_torch(lam, temperature):
    mixed, clean, index, _ = _inputs()
    ours = patchmix.patch_mix_contrastive_loss(mixed, clean, index, lam,
                                               temperature=temperature)
    theirs = torch_contrastive(torch.from_numpy(mixed), torch.from_numpy(clean),
                               torch.from_numpy(index).long(), lam, temperature)
    assert ours.dtype == jnp.float32
    assert abs(float(ours) - float(theirs)) < 1e-5 * max(1.0, abs(float(theirs)))


def test_contrastive_loss_diff_label_negatives_match_torch():
    mixed, clean, index, labels = _inputs(seed=1)
    ours = patchmix.patch_mix_contrastive_loss(mixed, clean, index, 0.6, labels=labels,
                                               negatives="diff_label")
    lab = torch.from_numpy(labels)
    idx = torch.from_numpy(index).long()
    eye = torch.eye(8, dtype=torch.bool)
    partner = F.one_hot(idx, 8).bool()
    allowed = (lab[:, None] != lab[None, :]) | eye | partner
    theirs = torch_contrastive(torch.from_numpy(mixed), torch.from_numpy(clean), idx, 0.6, 0.06,
                               allowed)
    assert abs(float(ours) - float(theirs)) < 1e-5 * max(1.0, abs(float(theirs)))
    with pytest.raises(ValueError, match="labels"):
        patchmix.patch_mix_contrastive_loss(mixed, clean, index, 0.6, negatives="diff_label")


def test_contrastive_loss_gradient_and_padding():
    mixed, clean, index, _ = _inputs()
    loss = lambda m, c: patchmix.patch_mix_contrastive_loss(m, c, index, 0.4)  # noqa: E731
    g_mixed, g_clean = jax.jit(jax.grad(loss, argnums=(0, 1)))(mixed, clean)
    assert float(jnp.abs(g_mixed).max()) > 0 and float(jnp.abs(g_clean).max()) == 0  # target
    g_flow = jax.jit(jax.grad(lambda c: patchmix.patch_mix_contrastive_loss(
        mixed, c, index, 0.4, stop_gradient=False)))(clean)
    assert float(jnp.abs(g_flow).max()) > 0
    # Padded rows (valid 0) change nothing: same loss as the real rows alone.
    real = np.array([0, 1, 2, 3, 4])
    sub_index = np.array([2, 0, 4, 1, 3], np.int32)
    full_index = np.concatenate([sub_index, [5, 6, 7]]).astype(np.int32)
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    padded_mixed = mixed.copy()
    padded_mixed[5:] = 1e3  # arbitrary content in padded rows
    ours = patchmix.patch_mix_contrastive_loss(padded_mixed, clean, full_index, 0.3, valid=valid)
    alone = patchmix.patch_mix_contrastive_loss(mixed[real], clean[real], sub_index, 0.3)
    assert abs(float(ours) - float(alone)) < 1e-6


def test_mixup_cross_entropy_matches_torch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 6).astype(np.int32)
    index = rng.permutation(6).astype(np.int32)
    ours = patchmix.patch_mix_cross_entropy(logits, labels, index, 0.7)
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels).long()
    theirs = (0.7 * F.cross_entropy(t_logits, t_labels)
              + 0.3 * F.cross_entropy(t_logits, t_labels[torch.from_numpy(index).long()]))
    assert abs(float(ours) - float(theirs)) < 1e-6
    valid = np.array([1, 1, 1, 0, 0, 0])
    masked = patchmix.patch_mix_cross_entropy(logits, labels, np.array([1, 2, 0, 3, 4, 5]), 0.7,
                                              valid=valid)
    t3 = t_logits[:3]
    want = (0.7 * F.cross_entropy(t3, t_labels[:3])
            + 0.3 * F.cross_entropy(t3, t_labels[torch.tensor([1, 2, 0])]))
    assert abs(float(masked) - float(want)) < 1e-6


def test_moving_average():
    before = {"w": jnp.array([0.0, 2.0]), "b": jnp.array(4.0)}
    after = {"w": jnp.array([2.0, 2.0]), "b": jnp.array(0.0)}
    out = patchmix.moving_average(before, after, 0.5)
    np.testing.assert_array_equal(out["w"], [1.0, 2.0])
    assert float(out["b"]) == 2.0


# ----------------------------------------------------------------------------------------------
# The mixing plan.


def test_plan_statistics():
    grid = (12, 79)
    keys = jax.random.split(jax.random.key(0), 200)
    plans = jax.jit(jax.vmap(lambda r: patchmix.patch_mix_plan(r, 8, grid, 1.0)))(keys)
    raw = np.asarray(jax.jit(jax.vmap(
        lambda r: patchmix.sample_lam(jax.random.split(r, 3)[0], 1.0)))(keys))
    index, patches, lams = (np.asarray(a) for a in plans)
    assert patches.shape == (200, 948) and index.shape == (200, 8) and lams.shape == (200,)
    counts = patches.sum(axis=1)
    np.testing.assert_array_equal(counts, np.floor(948 * (1 - raw)))  # int(n * (1 - lam))
    np.testing.assert_allclose(lams, 1 - counts / 948, atol=1e-7)  # lam recomputed
    assert (np.sort(index, axis=1) == np.arange(8)).all()  # permutations
    assert len({tuple(row) for row in index}) > 150
    # Beta(1, 1) is uniform on [0, 1].
    assert 0.42 < lams.mean() < 0.58 and lams.min() < 0.1 and lams.max() > 0.9
    assert np.abs(lams - raw).max() <= 1 / 948 + 1e-6


def test_plan_chooses_uniform_positions_and_time_columns():
    grid = (3, 5)
    keys = jax.random.split(jax.random.key(1), 300)
    patches, lam = jax.jit(jax.vmap(lambda r: patchmix.mixed_patches(r, 0.625, grid)))(keys)
    # int(15 * 0.375) = 5 patches; lam recomputed as 1 - 5 / 15
    assert (np.asarray(patches).sum(axis=1) == 5).all()
    np.testing.assert_allclose(lam, 2 / 3, rtol=1e-6)
    counts = np.asarray(patches).sum(axis=0)
    assert counts.min() > 60 and counts.max() < 140  # 100 expected per position
    patches, lam = patchmix.mixed_patches(jax.random.key(0), 0.5, grid, time_domain=True)
    columns = np.asarray(patches).reshape(3, 5)
    assert (columns == columns[:1]).all() and columns[0].sum() == 2  # int(5 * 0.5) columns
    assert float(lam) == pytest.approx(0.6)
    none, lam = patchmix.mixed_patches(jax.random.key(0), 1.0, grid)
    assert not none.any() and float(lam) == 1.0
    plan = patchmix.patch_mix_plan(jax.random.key(0), 4, grid, alpha=0.0)
    assert not plan.patches.any() and float(plan.lam) == 1.0


def test_plan_pairs_only_real_rows():
    valid = jnp.array([1, 0, 1, 1, 0, 1, 0, 1])
    keys = jax.random.split(jax.random.key(2), 100)
    perms = np.asarray(jax.jit(jax.vmap(lambda r: patchmix.valid_permutation(r, 8, valid)))(keys))
    assert (np.sort(perms, axis=1) == np.arange(8)).all()
    assert (perms[:, [1, 4, 6]] == [1, 4, 6]).all()
    assert (np.sort(perms[:, [0, 2, 3, 5, 7]], axis=1) == [0, 2, 3, 5, 7]).all()
    seen = {tuple(row) for row in perms}
    assert len(seen) > 50  # 120 permutations of the 5 real rows


# ----------------------------------------------------------------------------------------------
# Mixing inside the encoder, against Hugging Face's ASTModel with the authors' mixing.


def test_encoder_mixing_matches_torch(tmp_path):
    pytest.importorskip("transformers")
    from ast_helpers import hf_model, load_tool, save_hub

    from resp_jax.models import ast

    model = hf_model(classification=False, seed=11)
    out = load_tool().convert(save_hub(model, tmp_path / "hub"), tmp_path / "out")
    encoder, variables = ast.load_pretrained(out)
    x = np.random.default_rng(3).standard_normal((4, 100, 128)).astype(np.float32)
    plan = patchmix.patch_mix_plan(jax.random.key(5), 4, encoder.grid, 1.0)
    chosen = np.flatnonzero(np.asarray(plan.patches))
    index = torch.from_numpy(np.array(plan.index)).long()
    assert 0 < len(chosen) < 108

    with torch.no_grad():
        emb = model.embeddings
        patches = emb.patch_embeddings(torch.from_numpy(x))
        patches[:, chosen, :] = patches[index][:, chosen, :]  # the authors' in-place mixing
        batch = patches.shape[0]
        tokens = torch.cat([emb.cls_token.expand(batch, -1, -1),
                            emb.distillation_token.expand(batch, -1, -1), patches], dim=1)
        hidden = tokens + emb.position_embeddings
        layers = model.layers if hasattr(model, "layers") else model.encoder.layer  # v5 / v4
        for layer in layers:
            hidden = layer(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = model.layernorm(hidden)
        want = ((hidden[:, 0] + hidden[:, 1]) / 2).numpy()

    got = jax.jit(lambda v, x, p: encoder.apply(v, x, train=False, patch_mix=p))(
        variables, x, plan)
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    clean = encoder.apply(variables, x, train=False)
    assert np.abs(np.asarray(clean) - want).max() > 1e-3  # the mixing did something
