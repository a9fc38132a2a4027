"""resp_jax/models/beats.py as an encoder and a backbone (docs/method.md §10).

Parity with the reference implementation (token order included) is in test_beats_parity.py;
here: shapes, regularisation only in training (LayerDrop, the layer-wise gradient scaling),
save_encoder / load_pretrained, the configs and their resolution, converted weights through
model.init_from, the patient codes of the pipeline, and a tiny PAFA run end to end.
"""

import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax import configuration
from resp_jax.data import feature_store, features, metadata, pipeline, prepare
from resp_jax.models import beats, build_model
from train_helpers import load_config

TINY = dict(width=32, depth=2, heads=2, embed_dim=16, encoder_ffn_embed_dim=64, conv_pos=16,
            conv_pos_groups=4, num_buckets=16, max_distance=20)


@pytest.fixture(scope="module")
def tiny():
    encoder = beats.BEATsEncoder(**TINY)
    x = jax.random.normal(jax.random.key(0), (3, 50, 40))  # [B, frames, bins]: 3 x 2 patches
    variables = jax.jit(lambda x: encoder.init(jax.random.key(1), x, train=False))(x)
    return encoder, variables, x


def test_shapes_tokens_and_variables(tiny):
    encoder, variables, x = tiny
    params = variables["params"]
    assert set(variables) == {"params"}
    assert params["patch_embedding"]["kernel"].shape == (16, 16, 1, 16)
    assert params["pos_conv"]["weight_v"].shape == (16, 8, 32)
    assert params["relative_attention_bias"].shape == (16, 2)
    assert params["layer1"]["self_attn"]["grep_a"].shape == (2,)
    bins_frames = encoder.clone(input="bins_frames")
    (pooled, tokens), swapped = jax.jit(lambda v, x: (
        encoder.apply(v, x, train=False, tokens=True),
        bins_frames.apply(v, jnp.swapaxes(x, 1, 2), False)))(variables, x)
    assert tokens.shape == (3, 6, 32) and pooled.shape == (3, 32)
    np.testing.assert_allclose(pooled, tokens.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(swapped, pooled, atol=1e-6)
    with pytest.raises(ValueError, match="at least 16 frames"):
        encoder.apply(variables, x[:, :10], train=False)


def test_regularisation_only_in_training(tiny):
    encoder, variables, x = tiny
    noisy = encoder.clone(dropout=0.3, attention_dropout=0.3, activation_dropout=0.3,
                          dropout_input=0.3, encoder_layerdrop=0.5)
    # LayerDrop 1: every layer skipped, the tokens stop after the position embedding.
    all_dropped = encoder.clone(encoder_layerdrop=1.0)
    no_layers = beats.BEATsEncoder(**{**TINY, "depth": 0})

    @jax.jit
    def outputs(v, x):
        rngs = {"dropout": jax.random.key(2)}
        return (encoder.apply(v, x, False), noisy.apply(v, x, False),
                noisy.apply(v, x, True, rngs=rngs), all_dropped.apply(v, x, True, rngs=rngs),
                no_layers.apply(v, x, False))
    clean, noisy_eval, noisy_train, skipped, shallow = outputs(variables, x)
    np.testing.assert_allclose(noisy_eval, clean, atol=1e-6)
    assert not np.allclose(noisy_train, clean, atol=1e-4)
    np.testing.assert_allclose(skipped, shallow, atol=1e-6)


def test_layer_wise_gradient_decay_scales_earlier_gradients(tiny):
    encoder, variables, x = tiny

    def grad(ratio):
        e = encoder.clone(layer_wise_gradient_decay_ratio=ratio)
        return jax.grad(lambda v: e.apply(v, x, train=True).sum())
    full, decayed = (g["params"] for g in jax.jit(lambda v: (grad(1.0)(v), grad(0.5)(v)))(
        variables))
    # Layer 1's own weights see one scaling less than the patch embedding, which sees two.
    np.testing.assert_allclose(decayed["layer1"]["fc2"]["bias"], full["layer1"]["fc2"]["bias"],
                               rtol=1e-5)
    np.testing.assert_allclose(decayed["layer1"]["self_attn"]["q_proj"]["kernel"],
                               0.5 * full["layer1"]["self_attn"]["q_proj"]["kernel"],
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(decayed["patch_embedding"]["kernel"],
                               0.25 * full["patch_embedding"]["kernel"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(beats.grad_multiply(x, 0.5), x)  # identity forward


@pytest.mark.parametrize("width, groups", [(64, 16), (64, 1), (128, 2)],
                         ids=["block-diagonal", "one-group", "grouped"])
def test_position_conv_init_and_both_paths(width, groups):
    """The weight-norm gain starts at the norm of v (the kernel starts equal to v, as
    weight_norm's), and narrow groups computed as one block-diagonal dense convolution give
    the grouped convolution's values and gradients."""
    from resp_jax.models import beats_layers

    conv = beats_layers.PositionConv(16, groups)
    x = jax.random.normal(jax.random.key(0), (2, 40, width))
    params = conv.init(jax.random.key(1), x)["params"]
    v = np.asarray(params["weight_v"])
    np.testing.assert_allclose(params["weight_g"], np.sqrt((v ** 2).sum(axis=(1, 2))),
                               rtol=1e-6)

    def grouped(p, x):  # the weight-normalised grouped convolution itself
        v = p["weight_v"]
        kernel = v * (p["weight_g"] / jnp.sqrt((v ** 2).sum(axis=(1, 2))))[:, None, None]
        return jax.nn.gelu(jax.lax.conv_general_dilated(
            x, kernel, (1,), [(8, 7)], dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups) + p["bias"], approximate=False)
    params = {**params, "bias": jax.random.normal(jax.random.key(2), (width,)),
              "weight_g": params["weight_g"] * jnp.linspace(0.5, 2.0, 16)}

    def both(p, x):
        return conv.apply({"params": p}, x), grouped(p, x)
    ours, want = jax.jit(both)(params, x)
    np.testing.assert_allclose(ours, want, atol=1e-5)
    g_ours = jax.jit(jax.grad(lambda p, x: (conv.apply({"params": p}, x) * jnp.cos(x)).sum(),
                              argnums=(0, 1)))(params, x)
    g_want = jax.jit(jax.grad(lambda p, x: (grouped(p, x) * jnp.cos(x)).sum(),
                              argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if groups > 1:
        assert (width // groups < beats_layers.DENSE_GROUP_WIDTH) == (width == 64)


def _meta(**extra):
    return {**beats.ARCH_DEFAULTS, **beats.REGULARISATION_DEFAULTS, **TINY,
            "encoder_layerdrop": 0.1, **extra}


def test_save_and_load_round_trip_and_refusals(tiny, tmp_path):
    encoder, variables, x = tiny
    out = beats.save_encoder(tmp_path / "enc", variables, _meta(source={"note": "test"}))
    assert json.loads((out / "encoder.json").read_text())["architecture"] == "beats"
    loaded, restored = beats.load_pretrained(out)
    assert loaded.encoder_layerdrop == 0.1  # the checkpoint's regularisation by default
    assert beats.load_pretrained(out, encoder_layerdrop=0.0)[0].encoder_layerdrop == 0.0
    np.testing.assert_allclose(loaded.apply(restored, x, train=False),
                               encoder.apply(variables, x, train=False), atol=1e-6)
    with pytest.raises(TypeError, match="accepts only"):
        beats.load_pretrained(out, width=8)
    with pytest.raises(ValueError, match="unexpected params/relative_attention_bias"):
        beats.save_encoder(tmp_path / "bad", variables, _meta(relative_position_embedding=False,
                                                              width=32))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="post-LayerNorm"):
        beats.save_encoder(tmp_path / "bad", variables, _meta(layer_norm_first=True))
    with pytest.raises(FileNotFoundError, match="convert_beats.py"):
        beats.load_pretrained(tmp_path)


def test_configs_resolve_and_sweep_seeds():
    from resp_jax import sweep

    for name in ("beats_ce", "beats_pafa", "beats_mscl"):
        for arg in (None, "quick", "sprsound"):
            config = load_config(name, arg)
            assert sweep.default_seeds(config) == 5
            resolved = configuration.resolve(config)
            assert resolved.model.name == "beats" and resolved.data.frontend == "beats"
            assert features.input_shape(resolved) == (128, 498)  # 5 s
            assert resolved.data.wave_scale == (32768.0 if arg == "quick" else 1.0)
            if name == "beats_mscl" and arg != "quick":  # SupCon's views: M-SCL's masks
                assert (resolved.augment.policy, resolved.augment.apply_per,
                        resolved.augment.freq_width, resolved.augment.time_width,
                        resolved.augment.fill) == ("reference", "batch", 20, 128, "min")
                assert resolved.augment.prob == statistics.NormalDist().cdf(1.0)
            else:  # PAFA's --nospec; beats_mscl:quick (docs/benchmarks.md)
                assert resolved.augment.prob == 0.0
            assert resolved.train.lr == (1e-3 if arg == "quick" else 5e-5)
            assert None not in resolved.model.beats.values()
            json.loads(resolved.to_json())
    assert sweep.default_seeds(load_config("mscl")) == 10  # the other configs keep 10
    r = configuration.resolve(load_config("beats_pafa"))
    assert (r.train.epochs, r.train.batch_size, r.train.weight_decay, r.train.eta_min,
            r.train.weight_average, r.train.schedule) == (100, 32, 1e-6, 5e-8, 0.5,
                                                          "cosine_from_1")
    assert (r.model.proj_hidden, r.model.proj_out, r.model.proj_ln, r.model.proj_pool) == (
        768, 768, True, "attention")
    assert r.loss.heads == (("patient", 1.0),) and not r.loss.class_weighted
    assert (r.loss.pafa_pcsl, r.loss.pafa_gpal) == (50.0, 0.0005)
    # The quick preset (from scratch) weights the PAFA term 0.03 in batches of 16; the full
    # recipe keeps PAFA's 1.0 and 32 (docs/benchmarks.md).
    q = configuration.resolve(load_config("beats_pafa", "quick"))
    assert (q.loss.heads, q.train.batch_size) == ((("patient", 0.03),), 16)
    assert (q.loss.pafa_pcsl, q.loss.pafa_gpal) == (50.0, 0.0005)
    config = load_config("beats_ce", "quick")
    config.model.dropout = 0.1  # AST's field: BEATs reads model.beats.dropout
    with pytest.raises(ValueError, match="model.beats"):
        configuration.resolve(config)


def test_init_from_a_converted_encoder(tiny, tmp_path):
    from resp_jax import optim, parallel
    from resp_jax.train_state import create_train_state

    encoder, variables, _ = tiny
    beats.save_encoder(tmp_path / "enc", variables, _meta())
    config = load_config("beats_ce")  # model.beats all None: the checkpoint's
    config.model.update(width=32, depth=2, heads=2, init_from=str(tmp_path / "enc"))
    config.data.duration = 0.5
    resolved = configuration.resolve(config)
    assert resolved.model.beats.encoder_layerdrop == 0.1  # filled from the checkpoint
    assert resolved.model.beats.max_distance == 20 and resolved.model.beats.embed_dim == 16
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = build_model(resolved, 4)
    state = create_train_state(resolved, model, optim.make_optimizer(resolved, 10), (128, 48),
                               mesh)
    for got, want in zip(jax.tree.leaves(state.params["encoder"]),
                         jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(got, want)
    config.model.beats.num_buckets = 32  # an architecture field against the checkpoint's
    with pytest.raises(ValueError, match="num_buckets 16 .config: 32."):
        create_train_state(configuration.resolve(config), build_model(
            configuration.resolve(config), 4), optim.make_optimizer(resolved, 10), (128, 48),
            mesh)


def test_patient_codes_reach_the_batches():
    assert metadata.patient_codes(["b", "a", "", "b"]).tolist() == [1, 0, -1, 1]
    n = 6
    rng = np.random.default_rng(0)
    split = prepare.Split(audio=[0.1 * rng.normal(size=9000).astype(np.float32)
                                 for _ in range(n)],
                          codes={"label": np.arange(n, dtype=np.int32) % 4},
                          stem=["r"] * n, patient=["101", "102", "101", "", "103", "102"],
                          index=np.arange(n, dtype=np.int32))
    config = load_config("beats_pafa", "quick")
    config.data.duration = 0.5
    feats = feature_store.Features(prepare.Prepared("icbhi", "", {"train": split}, []),
                                   config)
    assert feats.input_shape == (128, 48)
    batch = next(pipeline.train_batches(feats, config, epoch=0, fields=("label", "patient"),
                                        global_batch=8))
    order = np.random.default_rng([config.train.seed, 0]).permutation(n)
    want = np.array([0, 1, 0, -1, 2, 1])[order]
    np.testing.assert_array_equal(batch["patient"], np.concatenate([want, [-1, -1]]))
    np.testing.assert_allclose(batch["view1"][:n], features.normalise_fbank(
        feats["train"].x[order], "beats"), atol=1e-6)  # BEATs' normalisation, no min-max


@pytest.mark.slow
def test_tiny_pafa_run_end_to_end(tiny_icbhi, tmp_path):
    """configs/beats_pafa.py with a tiny BEATs on the tiny synthetic ICBHI: the training
    loss (CE + the PAFA loss, mean over each epoch's steps) falls over three epochs, every
    logged term is finite, and the run writes what every run writes."""
    from resp_jax import train

    config = load_config("beats_pafa", "quick")
    config.model.update(width=32, depth=1, heads=2)
    config.model.beats.update(embed_dim=16, encoder_ffn_embed_dim=64)
    config.data.update(root=str(tiny_icbhi["root"]), tfds_dir=str(tiny_icbhi["tfds"]),
                       duration=1.0)
    config.train.update(epochs=3, batch_size=8, log_every=2)
    config.loss.heads = (("patient", 1.0),)  # the recipe's weight (the quick preset's is 0.03)
    config.eval.batch_size = 16
    results = train.train_and_evaluate(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    loss = [line["loss"] for line in lines if line.get("split") == "train"]
    assert len(loss) == 3 and loss[-1] < 0.7 * loss[0], loss  # measured 453 -> 72
    steps = [line for line in lines if "step" in line]
    assert {"loss/ce", "loss/patient", "loss/pcsl", "loss/gpal"} <= set(steps[-1])
    assert all(np.isfinite(line[k]) for line in steps for k in line if k.startswith("loss"))
    assert results["norm"] == pytest.approx([features.BEATS_MEAN, 2 * features.BEATS_STD])
    assert 0 <= results["test"]["score"] <= 100


@pytest.mark.slow
def test_benchmark_beats_step():
    """tools/benchmark.py train-step --model=beats (the PAFA step; the comparison with the
    reference needs its code, which is not part of resp_jax: --reference=DIR)."""
    import contextlib
    import io
    import sys

    from train_helpers import ROOT

    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchmark.main(["train-step", "--model=beats", "--beats-size=tiny", "--method=pafa",
                        "--depth=1", "--batch=2", "--frames=32", "--steps=1", "--rounds=1"])
    result = json.loads(out.getvalue().splitlines()[-1])
    assert (result["model"], result["width"], result["depth"], result["heads"]) == (
        "beats", 192, 1, 3)
    assert result["tokens"] == 16 and result["frames"] == 32
    for key in ("samples_per_s", "step_gflop", "projected_icbhi_100_epochs_h"):
        assert result[key] > 0, key
    with pytest.raises(SystemExit, match="--reference=DIR"):
        benchmark.main(["train-step", "--model=beats", "--method=ce", "--vs-torch"])
    with pytest.raises(SystemExit, match="--model=beats .pafa."):
        benchmark.main(["train-step", "--method=pafa"])
