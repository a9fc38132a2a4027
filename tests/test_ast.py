"""resp_jax/models/ast.py: the encoder's behaviour and its on-disk format (docs/method.md §9).

Parity with PyTorch is in test_convert_ast.py (through the converter) and test_patchmix.py
(with patch mixing); here: shapes, jit, bfloat16, dropout / stochastic depth only in training,
the position-embedding arithmetic, and save_encoder / load_pretrained.
"""

import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax.models import ast

TINY = dict(width=32, depth=2, heads=4, frames=60, num_bins=40)


@pytest.fixture(scope="module")
def tiny():
    encoder = ast.ASTEncoder(**TINY)
    x = jax.random.normal(jax.random.key(0), (3, 60, 40))
    variables = jax.jit(lambda x: encoder.init(jax.random.key(1), x, train=False))(x)
    return encoder, variables, x


def test_shapes_grid_and_variables(tiny):
    encoder, variables, x = tiny
    assert encoder.grid == (3, 5)
    assert ast.patch_grid(128, 1024) == (12, 101) and ast.patch_grid(128, 798) == (12, 79)
    assert set(variables) == {"params"}  # no batch_stats
    params = variables["params"]
    assert params["pos_embed"].shape == (1, 2 + 15, 32)
    assert params["block0"]["attn"]["qkv"]["kernel"].shape == (32, 96)
    assert params["block1"]["fc1"]["kernel"].shape == (32, 128)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.jit(lambda v, x: encoder.apply(v, x, train=False))(variables, x)
    assert out.shape == (3, 32) and out.dtype == jnp.float32
    # mask is accepted and ignored.
    masked = encoder.apply(variables, x, train=False, mask=jnp.array([1, 0, 1]))
    np.testing.assert_allclose(masked, out, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[batch, 60, 40\]"):
        encoder.apply(variables, x[:, :50], train=False)


@pytest.mark.slow  # compiles the encoder twice more, in bfloat16
def test_bfloat16_compute(tiny):
    encoder, variables, x = tiny
    half = ast.ASTEncoder(**TINY, dtype=jnp.bfloat16)
    out = jax.jit(lambda v, x: half.apply(v, x, train=False))(variables, x)
    ref = encoder.apply(variables, x, train=False)
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    assert float(jnp.abs(out - ref).max()) < 0.1 * float(jnp.abs(ref).max())
    # bfloat16 parameters are not created: init under bf16 compute still gives float32.
    v16 = half.init(jax.random.key(1), x, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v16))


def test_dropout_and_drop_path_only_in_training(tiny):
    _, variables, x = tiny
    noisy = ast.ASTEncoder(**TINY, dropout=0.2, attention_dropout=0.2, drop_path=0.3)
    clean = ast.ASTEncoder(**TINY)
    ref = clean.apply(variables, x, train=False)
    # Evaluation: deterministic, no rng needed, same as without regularisation.
    np.testing.assert_allclose(noisy.apply(variables, x, train=False), ref, atol=1e-6)
    # Training: needs the 'dropout' rng, and changes the output.
    with pytest.raises(Exception, match="dropout"):
        noisy.apply(variables, x, train=True)
    step = jax.jit(lambda v, x, r: noisy.apply(v, x, train=True, rngs={"dropout": r}))
    a = step(variables, x, jax.random.key(2))
    b = step(variables, x, jax.random.key(3))
    assert float(jnp.abs(a - ref).max()) > 1e-3 and float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(a, step(variables, x, jax.random.key(2)))
    # Rates 0: training needs no rng and equals evaluation.
    np.testing.assert_allclose(clean.apply(variables, x, train=True), ref, atol=1e-6)


def test_drop_path_drops_whole_examples():
    drop = ast.DropPath(0.5)
    x = jnp.ones((64, 5, 3))
    y = drop.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    per_row = np.asarray(y).reshape(64, -1)
    assert set(np.unique(per_row)) <= {0.0, 2.0}
    assert all(len(set(row)) == 1 for row in per_row)  # one decision per example
    assert 10 < (per_row[:, 0] == 0).sum() < 54
    np.testing.assert_array_equal(drop.apply({}, x, train=False), x)


def test_patch_mix_input(tiny):
    encoder, variables, x = tiny
    from resp_jax.patchmix import PatchMixPlan

    f = jax.jit(lambda v, x, plan: encoder.apply(v, x, train=False, patch_mix=plan))
    ref = encoder.apply(variables, x, train=False)
    nothing = PatchMixPlan(jnp.array([2, 0, 1]), jnp.zeros(15, bool), jnp.float32(1))
    np.testing.assert_allclose(f(variables, x, nothing), ref, atol=1e-6)
    # Every patch replaced: row i becomes row index[i] (the tokens carry no example data).
    everything = PatchMixPlan(jnp.array([2, 0, 1]), jnp.ones(15, bool), jnp.float32(0))
    np.testing.assert_allclose(f(variables, x, everything), ref[jnp.array([2, 0, 1])], atol=1e-5)
    with pytest.raises(ValueError, match="patch_mix"):
        encoder.apply(variables, x, train=False,
                      patch_mix=PatchMixPlan(jnp.arange(3), jnp.ones(14, bool), 0.0))


def test_resize_linear_matches_hand_values():
    a = np.array([0.0, 10.0, 20.0])
    # 3 -> 6: source coordinates (d + 0.5) / 2 - 0.5 = -0.25 (clamped), 0.25, 0.75, ...
    np.testing.assert_allclose(ast._resize_linear(a, 6, 0), [0, 2.5, 7.5, 12.5, 17.5, 20])
    np.testing.assert_array_equal(ast._resize_linear(a, 3, 0), a)


def test_adapt_position_embedding_cuts_centre():
    pos = np.arange(2 + 4 * 7, dtype=np.float32).reshape(1, -1, 1)
    out = ast.adapt_position_embedding(pos, (4, 7), (2, 3))
    grid = pos[0, 2:, 0].reshape(4, 7)
    # time: 7 // 2 - 3 // 2 = 2 -> columns 2..4; frequency: 4 // 2 - 2 // 2 = 1 -> rows 1..2
    np.testing.assert_array_equal(out[0, :2, 0], [0, 1])
    np.testing.assert_array_equal(out[0, 2:, 0], grid[1:3, 2:5].reshape(-1))
    with pytest.raises(ValueError, match=r"\[1, 30, D\]"):
        ast.adapt_position_embedding(pos[:, :-1], (4, 7), (2, 3))


# ----------------------------------------------------------------------------------------------
# The on-disk format.


def _meta(**kw):
    return {"width": 32, "depth": 2, "heads": 4, "mlp_ratio": 4, "patch": 16, "fstride": 10,
            "tstride": 10, "layer_norm_eps": 1e-6, "num_bins": 40, "frames": 60,
            "source": {"note": "test"}, **kw}


def test_save_and_load_round_trip(tiny, tmp_path):
    encoder, variables, x = tiny
    out = ast.save_encoder(tmp_path / "enc", variables, _meta())
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == "ast" and meta["grid"] == [3, 5]
    assert meta["source"] == {"note": "test"}
    loaded, restored = ast.load_pretrained(out)
    assert set(restored) == {"params"} and loaded.grid == (3, 5)
    np.testing.assert_array_equal(loaded.apply(restored, x, train=False),
                                  encoder.apply(variables, x, train=False))
    longer, longer_vars = ast.load_pretrained(out, frames=100, dtype=jnp.bfloat16, dropout=0.1)
    assert longer.grid == (3, 9) and longer.dtype == jnp.bfloat16 and longer.dropout == 0.1
    assert longer_vars["params"]["pos_embed"].shape == (1, 29, 32)
    with pytest.raises(FileExistsError):
        ast.save_encoder(tmp_path / "enc", variables, _meta())
    ast.save_encoder(tmp_path / "enc", variables, _meta(source="again"), overwrite=True)
    assert ast.encoder_meta(tmp_path / "enc")["source"] == "again"
    with pytest.raises(TypeError, match="extra fields"):
        ast.load_pretrained(out, width=64)


def test_save_refuses_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    _, variables, _ = tiny
    with pytest.raises(ValueError, match="pos_embed: shape"):
        ast.save_encoder(tmp_path / "enc", variables, _meta(frames=100))
    with pytest.raises(ValueError, match="missing field"):
        ast.save_encoder(tmp_path / "enc", variables, {"width": 32})

    def fail(path, state):
        path.mkdir()
        (path / "half").write_text("written")
        raise OSError("disk full")

    from resp_jax import checkpoint  # models/converted.py writes every converted encoder

    monkeypatch.setattr(checkpoint, "save_arrays", fail)
    with pytest.raises(OSError, match="disk full"):
        ast.save_encoder(tmp_path / "enc", variables, _meta())
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_other_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="tools/convert_ast.py"):
        ast.load_pretrained(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps({"format": 1, "architecture": "cnn6"}))
    with pytest.raises(ValueError, match="architecture 'ast'"):
        ast.load_pretrained(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps({**_meta(), "format": 1,
                                                       "architecture": "ast"}))
    with pytest.raises(ValueError, match="cannot read the orbax checkpoint"):
        ast.load_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------
# How the blocks run (resp_jax/models/transformer.py): the same numbers every way.


def _loss_and_grads(encoder, variables, x):
    def loss(params):
        return jnp.sum(encoder.apply({"params": params}, x, train=False) ** 2)
    return jax.jit(jax.value_and_grad(loss))(variables["params"])


@pytest.mark.slow  # four compilations of the step
def test_scan_remat_and_unrolled_blocks_agree(tiny):
    """One lax.scan over the stacked blocks, with or without recomputation, gives the unrolled
    blocks' features and gradients (float32 rounding); the parameters keep their names."""
    encoder, variables, x = tiny
    assert "block1" in variables["params"] and "blocks" not in variables["params"]
    plain = ast.ASTEncoder(**TINY, scan=False, remat="none")  # blocks unrolled, all kept
    want_loss, want_grads = _loss_and_grads(plain, variables, x)
    for kw in ({"remat": "none"}, {"remat": "attention"}, {"remat": "block"},
               {"scan": False, "remat": "block"}):
        loss, grads = _loss_and_grads(ast.ASTEncoder(**TINY, **kw), variables, x)
        assert float(loss) == pytest.approx(float(want_loss), rel=1e-5), kw
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            w = want_grads
            for k in path:
                w = w[k.key]
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=f"{kw} {path}")
    with pytest.raises(ValueError, match="remat"):
        ast.ASTEncoder(**TINY, remat="all").apply(variables, x, train=False)


def test_attention_matches_softmax_reference():
    """`transformer.attend` (row sums divided after the value product) against
    jax.nn.dot_product_attention's XLA path."""
    from resp_jax.models import transformer

    q, k, v = np.random.default_rng(0).standard_normal((3, 2, 7, 3, 8)).astype(np.float32)
    want = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    got = jax.jit(lambda q, k, v: transformer.attend(q, k, v, kernel="xla"))
    np.testing.assert_allclose(got(q, k, v), want(q, k, v), atol=1e-6)


def test_attention_kernel_and_remat_choice(monkeypatch):
    from resp_jax.models import transformer

    choose = transformer.attention_kernel
    assert choose("auto", jnp.bfloat16, 64, False) == "xla"  # this CPU
    assert transformer.remat_choice("auto") == "block"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert choose("auto", jnp.bfloat16, 64, False) == "cudnn"
    assert choose("auto", jnp.float16, 128, False) == "cudnn"
    assert choose("auto", jnp.float32, 64, False) == "xla"  # cuDNN's kernel is 16-bit
    assert choose("auto", jnp.bfloat16, 12, False) == "xla"  # head width not a multiple of 8
    assert choose("auto", jnp.bfloat16, 64, True) == "xla"  # attention dropout
    assert choose("xla", jnp.bfloat16, 64, False) == "xla"
    assert choose("cudnn", jnp.float32, 64, False) == "cudnn"
    with pytest.raises(ValueError, match="attention must be one of"):
        choose("flash", jnp.bfloat16, 64, False)
    assert transformer.remat_choice("auto") == "none"
    assert transformer.remat_choice("attention") == "attention"


def test_dropout_in_the_scanned_blocks(tiny):
    _, variables, x = tiny
    noisy = ast.ASTEncoder(**TINY, dropout=0.2, attention_dropout=0.2)
    step = jax.jit(lambda v, x, r: noisy.apply(v, x, train=True, rngs={"dropout": r}))
    a, b = step(variables, x, jax.random.key(2)), step(variables, x, jax.random.key(3))
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(a, step(variables, x, jax.random.key(2)))
    np.testing.assert_allclose(noisy.apply(variables, x, train=False),
                               ast.ASTEncoder(**TINY).apply(variables, x, train=False), atol=1e-6)


def test_mean_pool_and_strides_from_the_config():
    # pool='mean' averages the final LayerNorm of every token (class, distillation, patches);
    # with no blocks the tokens are the embeddings, so the output can be written out here.
    encoder = ast.ASTEncoder(**{**TINY, "depth": 0}, scan=False, pool="mean", fstride=8,
                             tstride=12)
    assert encoder.grid == ((40 - 16) // 8 + 1, (60 - 16) // 12 + 1)
    x = jax.random.normal(jax.random.key(2), (2, 60, 40))
    variables = encoder.init(jax.random.key(3), x, train=False)
    p = variables["params"]
    image = jnp.swapaxes(x, 1, 2)[..., None]
    patches = jax.lax.conv_general_dilated(image, p["patch_embed"]["kernel"], (8, 12), "VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches = (patches + p["patch_embed"]["bias"]).reshape(2, -1, 32)
    tokens = jnp.concatenate([jnp.broadcast_to(p["cls_token"], (2, 1, 32)),
                              jnp.broadcast_to(p["dist_token"], (2, 1, 32)), patches], 1)
    tokens = tokens + p["pos_embed"]
    mu, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
    normed = (tokens - mu) / jnp.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    out = encoder.apply(variables, x, train=False)
    np.testing.assert_allclose(out, normed.mean(1), atol=1e-5)
    cls_out = encoder.clone(pool="cls").apply(variables, x, train=False)
    np.testing.assert_allclose(cls_out, normed[:, :2].mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        encoder.clone(pool="max").apply(variables, x, train=False)


def test_encoder_reads_strides_and_pool_from_the_config():
    from train_helpers import load_config
    from resp_jax import configuration
    config = configuration.resolve(load_config("ast_ce", "quick"))
    enc = ast.encoder(config)
    assert (enc.fstride, enc.tstride, enc.pool) == (16, 16, "mean")  # the tiny demo's
    assert config.augment.prob == 0 and config.linear_eval.features == "cached"
    full = configuration.resolve(load_config("ast_ce"))  # the recipe: AST's own
    enc = ast.encoder(full)
    assert (enc.fstride, enc.tstride, enc.pool) == (10, 10, "cls")
    assert full.augment.prob == statistics.NormalDist().cdf(1.0)  # P(Z < 1), not rounded
    assert full.linear_eval.features == "per_epoch"


def test_recipe_defaults_that_differ_from_the_authors_run():
    """The position layout is AST's, not the Patch-Mix code's (one flag restores it), and a
    sweep runs 5 seeds where the authors ran one."""
    from train_helpers import CONFIGS, load_config
    from resp_jax import sweep
    for name in ("ast_ce", "ast_patchmix_cl", "ast_mscl"):
        config = load_config(name)
        assert config.model.pos_embed == "ast" and sweep.default_seeds(config) == 5
        assert "--config.model.pos_embed=patchmix_code" in (CONFIGS / f"{name}.py").read_text()
