"""AST as a backbone of the whole package: every method's step, the fbank front end through the
feature store and pipeline, Patch-Mix CL and weight averaging in the step, converted weights
through model.init_from, and a tiny AST run end to end with predict, report and embed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax import configuration, finished_run, optim, parallel, patchmix, steps
from resp_jax.data import audio, feature_store, features, pipeline, prepare
from resp_jax.models import ast, build_model
from resp_jax.train_state import create_train_state
from train_helpers import load_config

TINY = {"width": 32, "depth": 2, "heads": 2}
METHODS = {"ce": ("ast_ce", None), "hybrid": ("ast_ce", (("label", 1.0),)),
           "scl": ("ast_ce", (("label", 1.0),)), "simclr": ("ast_ce", (("instance", 1.0),)),
           "mscl": ("ast_mscl", None), "patchmix_cl": ("ast_patchmix_cl", None)}


def tiny_ast_config(name="ast_ce", method=None, heads=None, *, duration=1.0, **overrides):
    """An AST config with a tiny encoder (width 32, depth 2, 2 heads) and 1 s clips."""
    config = load_config(name)
    if method is not None:
        config.method = method
    if heads is not None:
        config.loss.heads = heads
    config.model.update(TINY)
    if config.method != "patchmix_cl":
        config.model.proj_hidden, config.model.proj_out = 16, 8
    config.data.duration = duration
    config.train.update(lr=1e-3, log_every=2)
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def _batch(shape, seed=0, real=8):
    rng = np.random.default_rng(seed)
    return {"view1": rng.normal(size=(8,) + shape).astype(np.float32),
            "view2": rng.normal(size=(8,) + shape).astype(np.float32),
            "label": np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32),
            "sex+age_group": np.array([0, 1, 2, 3, 0, -1, 2, 1], np.int32),
            "mask": (np.arange(8) < real).astype(np.float32)}


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(jax.devices()[:1])


def _setup(config, mesh, pretrained="load"):
    config = configuration.resolve(config)
    shape = features.input_shape(config)
    model = build_model(config, 4)
    tx = optim.make_optimizer(config, steps_per_epoch=10)
    state = create_train_state(config, model, tx, shape, mesh, pretrained=pretrained)
    return config, model, tx, state, shape


@pytest.mark.slow  # one step compilation per method
@pytest.mark.parametrize("method", METHODS)
def test_every_method_step_lowers_its_loss_on_a_tiny_ast(method, mesh):
    name, heads = METHODS[method]
    config, model, tx, state, shape = _setup(tiny_ast_config(name, method, heads), mesh)
    assert shape == (128, 98)  # 1 s of fbank frames
    step = steps.make_train_step(model, tx, config, None, mesh, optim.schedule(config, 10))
    keep = ("view1", "view2", "mask") + configuration.fields(config)
    batch = parallel.to_global({k: v for k, v in _batch(shape).items() if k in keep}, mesh)
    history = []
    for _ in range(6):
        state, m = step(state, batch)
        history.append(m)
    losses = [float(h["loss"]) for h in jax.device_get(history)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.02, losses
    if method == "patchmix_cl":  # CE + 1.0 x the Patch-Mix loss, both reported
        assert float(m["loss"]) == pytest.approx(float(m["loss/ce"]) + float(m["loss/instance"]),
                                                 rel=1e-5)
        assert state.params["proj_instance"]["out"]["kernel"].shape == (32, 32)
        assert set(state.batch_stats) == {"proj_instance"}  # the projector's BatchNorm
        assert "norm" in state.params["classifier"]  # AST's LayerNorm + Linear head


@pytest.mark.slow
def test_patchmix_cl_is_the_authors_loss_and_averages_weights(mesh):
    """One patchmix_cl step by hand: clean pass -> CE; mixed pass (plan from the step's rng)
    -> projector -> Patch-Mix loss against the clean features; Adam; then 0.5 / 0.5 average
    of the weights and BatchNorm statistics with those before the step."""
    config, model, tx, state, shape = _setup(tiny_ast_config("ast_patchmix_cl"), mesh)
    assert config.train.weight_average == 0.5 and config.model.proj_bn
    batch = {k: jnp.asarray(v) for k, v in _batch(shape, real=6).items()
             if k in ("view1", "view2", "mask", "label")}
    new, m = steps.train_step_fn(model, tx, config, None, optim.schedule(config, 10))(state,
                                                                                       batch)
    rng1, rng2 = jax.random.split(jax.random.fold_in(state.key, state.step))
    plan = patchmix.patch_mix_plan(jax.random.split(rng2)[0], 8, model.encoder.grid, 1.0,
                                   valid=batch["mask"])

    def loss_fn(params):
        v = {"params": params, "batch_stats": state.batch_stats}
        clean = model.apply(v, batch["view1"], True, batch["mask"], method="encode")
        mixed = model.apply(v, batch["view1"], True, batch["mask"], method="encode",
                            patch_mix=plan)
        z, upd = model.apply(v, mixed, "instance", True, batch["mask"], method="project",
                             mutable=["batch_stats"])
        logits = model.apply(v, clean, method="classify")
        logp = jax.nn.log_softmax(logits)[jnp.arange(8), batch["label"]]
        ce = -jnp.sum(logp * batch["mask"]) / batch["mask"].sum()
        cl = patchmix.patch_mix_contrastive_loss(z, clean, plan.index, plan.lam,
                                                 temperature=0.06, valid=batch["mask"])
        return ce + cl, upd["batch_stats"]

    (want, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    assert float(m["loss"]) == pytest.approx(float(want), rel=1e-5)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    stepped = jax.tree.map(lambda p, u: p + u, state.params, updates)
    averaged = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, state.params, stepped)
    for got, exp in zip(jax.tree.leaves(new.params), jax.tree.leaves(averaged)):
        np.testing.assert_allclose(got, exp, atol=2e-6)
    for got, before, after in zip(jax.tree.leaves(new.batch_stats),
                                  jax.tree.leaves(state.batch_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(got, 0.5 * before + 0.5 * after, atol=1e-6)


@pytest.mark.slow
def test_init_from_a_converted_tiny_ast(mesh, tmp_path):
    source = ast.ASTEncoder(**TINY, frames=200, layer_norm_eps=1e-12)
    variables = source.init(jax.random.key(3), jnp.zeros((1, 200, 128)), train=False)
    meta = {**TINY, "mlp_ratio": 4.0, "patch": 16, "fstride": 10, "tstride": 10,
            "layer_norm_eps": 1e-12, "num_bins": 128, "frames": 200}
    ast.save_encoder(tmp_path / "tiny_ast", variables, meta)
    config = tiny_ast_config(model__init_from=str(tmp_path / "tiny_ast"))
    config, model, tx, state, shape = _setup(config, mesh)
    assert config.model.layer_norm_eps == 1e-12  # the checkpoint's, recorded in config.json
    _, want = ast.load_pretrained(tmp_path / "tiny_ast", frames=98)
    for got, exp in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(want)):
        np.testing.assert_array_equal(got, exp)
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    feats = model.apply({"params": state.params, "batch_stats": {}}, x, False)["features"]
    np.testing.assert_allclose(feats, ast.ASTEncoder(**TINY, frames=98, layer_norm_eps=1e-12)
                               .apply(want, np.swapaxes(x, 1, 2), False), atol=1e-5)
    wrong = tiny_ast_config(model__init_from=str(tmp_path / "tiny_ast"), model__heads=4)
    with pytest.raises(ValueError, match="heads 2 .config: 4."):
        _setup(wrong, mesh)


def test_config_checks():
    configuration.resolve(load_config("ast_patchmix_cl"))  # 768-wide projector from the width
    with pytest.raises(ValueError, match="model.name must be 'ast'"):
        configuration.resolve(tiny_ast_config("ast_patchmix_cl", model__name="cnn6",
                                              model__proj_hidden=32, model__proj_out=32))
    with pytest.raises(ValueError, match="single head"):
        configuration.resolve(tiny_ast_config("ast_patchmix_cl", loss__heads=(("label", 1.0),)))
    with pytest.raises(ValueError, match="data.norm=.dataset. is for CNN6"):
        configuration.resolve(tiny_ast_config(data__norm="dataset"))
    with pytest.raises(ValueError, match="augment.policy"):
        configuration.resolve(tiny_ast_config(augment__policy="other"))
    for name in ("ast_ce", "ast_patchmix_cl", "ast_mscl"):
        for arg in ("icbhi", "sprsound", "quick"):
            resolved = configuration.resolve(load_config(name, arg))
            assert resolved.model.name == "ast" and resolved.data.frontend == "fbank"
            assert resolved.train.lr == (1e-3 if arg == "quick" else 5e-5)
            if name == "ast_patchmix_cl":
                assert resolved.model.proj_out == resolved.model.width
    # The authors' scripts: --ma_update --ma_beta 0.5 in both, --weighted_loss in the CE one;
    # the M-SCL code's linear stage is weighted on ICBHI only.
    weighted = {(name, arg): configuration.resolve(load_config(name, arg)).loss.class_weighted
                for name in ("ast_ce", "ast_patchmix_cl", "ast_mscl")
                for arg in ("icbhi", "sprsound")}
    assert weighted == {("ast_ce", "icbhi"): True, ("ast_ce", "sprsound"): True,
                        ("ast_patchmix_cl", "icbhi"): False, ("ast_patchmix_cl", "sprsound"): False,
                        ("ast_mscl", "icbhi"): True, ("ast_mscl", "sprsound"): False}
    resolved = configuration.resolve(load_config("ast_ce"))
    assert resolved.train.weight_average == 0.5
    assert features.input_shape(resolved) == (128, 798)  # 8 s
    assert resolved.model.layer_norm_eps == 1e-6 and resolved.train.lr == 5e-5
    assert [float(optim.epoch_lr(resolved, e)) for e in (0, 49)] == pytest.approx(
        [5e-8 + (5e-5 - 5e-8) * (1 + np.cos(np.pi / 50)) / 2, 5e-8])


def _fbank_features(n=5, seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    waves = [0.1 * rng.normal(size=int(rng.integers(4000, 20000))).astype(np.float32)
             for _ in range(n)]
    split = prepare.Split(audio=waves, codes={"label": np.arange(n, dtype=np.int32) % 4},
                          stem=["r"] * n, patient=["p"] * n, index=np.arange(n, dtype=np.int32))
    config = tiny_ast_config(duration=seconds)
    feats = feature_store.Features(prepare.Prepared("icbhi", "", {"train": split,
                                                                  "test": split}, []), config)
    return config, feats, waves


@pytest.mark.slow  # the fbank of whole synthetic clips, then batches
def test_fbank_features_and_batches():
    config, feats, waves = _fbank_features()
    samples = int(config.data.duration * audio.SAMPLE_RATE)
    assert feats.input_shape == (128, 98) and feats["train"].x.shape == (5, 128, 98)
    for x, w in zip(feats["train"].x, waves):
        np.testing.assert_allclose(x, features.kaldi_fbank(
            audio.fit(w, samples, config.data.pad)).T, atol=1e-5)
    want = features.normalise_fbank(feats["test"].x)
    got = next(pipeline.eval_batches(feats, config, "test", global_batch=8,
                                     order=np.arange(5)))
    np.testing.assert_allclose(got["x"][:5], want, atol=1e-6)  # no batch min-max
    assert not got["x"][5:].any()
    # The Patch-Mix policy: every masked value is the example's mean (frequency masks) or the
    # mean after the frequency masks (time masks), on the normalised input.
    config.augment.update(prob=1.0, time_width=20)  # time masks cannot cover all 98 frames
    batch = next(pipeline.train_batches(feats, config, epoch=0, global_batch=8))
    order = np.random.default_rng([config.train.seed, 0]).permutation(5)
    masked = 0
    for view in ("view1", "view2"):
        for i, row in enumerate(order):
            x, v = want[row], batch[view][i]
            changed = v != x
            rows = changed.all(axis=1)  # a frequency mask spans every frame
            m1 = x.mean()
            m2 = np.where(rows[:, None], m1, x).mean()
            assert np.isclose(v[changed][:, None], [m1, m2], rtol=1e-5).any(axis=1).all()
            assert changed.all(axis=1).sum() <= 2 * 47 and changed.all(axis=0).sum() <= 2 * 19
            masked += changed.sum()
    assert masked


@pytest.mark.slow
def test_tiny_ast_run_with_predict_report_embed(tiny_icbhi, tmp_path):
    from resp_jax import embed, metrics, predict, report, train
    from resp_jax.data import readers, run_data

    config = tiny_ast_config("ast_ce", duration=2.0, train__epochs=3, train__batch_size=8,
                             eval__batch_size=16)
    config.data.root, config.data.tfds_dir = str(tiny_icbhi["root"]), str(tiny_icbhi["tfds"])
    results = train.train_and_evaluate(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    for split in ("train", "test"):  # it learns: both losses fall over the three epochs
        loss = [line["loss"] for line in lines if line.get("split") == split]
        assert len(loss) == 3 and loss[-1] < loss[0] - 0.02, (split, loss)
    assert results["norm"] == pytest.approx([features.AUDIOSET_MEAN,
                                             2 * features.AUDIOSET_STD])
    run = finished_run.load(tmp_path / "run")
    data = run_data.load(run.config)
    arrays = embed.embed(run, data, "test")
    assert arrays["features"].shape == (data.sizes["test"], 32)
    s = metrics.summarize(arrays["label"], arrays["prediction"], dataset="icbhi")
    assert s["score"] == pytest.approx(results["test"]["score"], abs=1e-9)
    txt = sorted((tiny_icbhi["root"] / "ICBHI_final_database").glob("*.txt"))[0]
    rows = predict.predict(run, [str(txt.with_suffix(".wav"))], [str(txt)])
    cycles = readers.read_annotation(txt)[1]
    assert len(rows) == len(cycles)
    # Prepared by hand as the recipe's authors do (data.resampler, data.fade: the AST recipe's
    # torchaudio resampler and hard padding seams), independently of predict's code path.
    assert (run.config.data.resampler, run.config.data.fade) == ("torchaudio", "recording")
    wave = audio.load(txt.with_suffix(".wav"), resampler="torchaudio")
    n = int(run.config.data.duration * audio.SAMPLE_RATE)
    x = np.stack([features.normalise_fbank(features.kaldi_fbank(
        audio.fit(c, n, run.config.data.pad)).T)
        for c in audio.cycles(wave, [(r["start"], r["end"]) for r in rows], "recording")
    ]).astype(np.float32)
    probs = jax.nn.softmax(run.model.apply(run.variables, x, False)["logits"])
    got = np.array([[r["probabilities"][c] for c in run.classes] for r in rows])
    np.testing.assert_allclose(got, probs, atol=1e-4)
    assert (report.report(tmp_path / "run")).is_file()


@pytest.mark.slow
def test_benchmark_ast_step_against_transformers():
    import contextlib
    import io
    import sys

    from train_helpers import ROOT

    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchmark.main(["train-step", "--model=ast", "--ast-size=tiny", "--method=ce",
                        "--batch=2", "--frames=48", "--steps=1", "--rounds=1", "--vs-torch"])
    result = json.loads(out.getvalue().splitlines()[-1])
    assert (result["model"], result["width"], result["depth"], result["heads"]) == (
        "ast", 192, 12, 3)
    assert result["grid"] == [12, 4] and result["frames"] == 48
    for key in ("samples_per_s", "torch_samples_per_s", "step_gflop",
                "projected_icbhi_50_epochs_h"):
        assert result[key] > 0, key
    assert result["jax_over_torch"] == pytest.approx(
        result["samples_per_s"] / result["torch_samples_per_s"], rel=0.01)
    with pytest.raises(SystemExit, match="--method=ce"):
        benchmark.main(["train-step", "--model=ast", "--method=scl", "--vs-torch"])
