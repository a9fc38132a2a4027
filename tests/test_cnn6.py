"""CNN6 encoder, heads and the converted-encoder format (docs/method.md §3).

Numerics are checked against a float64 numpy forward written here; the PyTorch parity of
converted AudioSet weights is in test_convert_panns.py.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resp_jax.models import backbone, build_model, cnn6
from resp_jax.models.heads import Model

TINY = (2, 4, 4, 8)

def _model(channels=cnn6.DEFAULT_CHANNELS, num_classes=4, heads=(), dtype=jnp.float32):
    """CNN6 with the shared heads, as `build_model` assembles it."""
    return Model(encoder=cnn6.CNN6Encoder(channels, "reference", dtype),
                 num_classes=num_classes, heads=heads, dtype=dtype)



def _x(batch, frames=36, mel=64, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, mel, frames)).astype(np.float32)


def _randomise(variables, seed=0):
    """Random BatchNorm parameters and running statistics (init has scale 1, mean 0, var 1)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(np.asarray, variables["params"])
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for block, leaves in params.items():
        c = leaves["bn"]["scale"].shape
        leaves["bn"]["scale"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        leaves["bn"]["bias"] = rng.normal(0, 0.2, c).astype(np.float32)
        stats[block]["bn"]["mean"] = rng.normal(0, 0.3, c).astype(np.float32)
        stats[block]["bn"]["var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return {"params": params, "batch_stats": stats}


def _init(encoder, x, seed=0):
    return _randomise(encoder.init(jax.random.key(seed), x, train=False), seed)


def _numpy_forward(variables, x, layout, train=False, mask=None):
    """Independent float64 CNN6 forward; in training mode also returns the new running stats."""
    image = np.asarray(x, np.float64)[..., None]
    if layout == "panns":
        image = image.transpose(0, 2, 1, 3)
    rows = np.ones(len(x), bool) if mask is None else np.asarray(mask) > 0
    new_stats = {}
    for i in range(1, len(variables["params"]) + 1):
        block = f"conv_block{i}"
        p, s = variables["params"][block], variables["batch_stats"][block]
        kernel = np.asarray(p["conv"]["kernel"], np.float64)
        padded = np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
        image = np.einsum("bhwcij,ijco->bhwo", windows, kernel)
        if train:
            real = image[rows]
            mean, var = real.mean(axis=(0, 1, 2)), real.var(axis=(0, 1, 2))
            unbiased = real.var(axis=(0, 1, 2), ddof=1)  # PyTorch's running-variance update
            new_stats[block] = {"bn": {"mean": 0.9 * s["bn"]["mean"] + 0.1 * mean,
                                       "var": 0.9 * s["bn"]["var"] + 0.1 * unbiased}}
        else:
            mean, var = s["bn"]["mean"], s["bn"]["var"]
        image = (image - mean) / np.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
        image = np.maximum(image, 0)
        b, h, w, c = image.shape
        image = image[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
        image = image.mean(axis=(2, 4))
    pooled = image.mean(axis=2)
    return pooled.max(axis=1) + pooled.mean(axis=1), new_stats


def _close(actual, expected, rtol=1e-4):
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


def test_parameter_count_at_full_width():
    channels = cnn6.DEFAULT_CHANNELS
    shapes = cnn6.encoder_shapes(channels)
    n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
    n_stats = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["batch_stats"]))
    inputs = (1, *channels[:-1])
    conv = sum(5 * 5 * cin * cout for cin, cout in zip(inputs, channels))
    bn = sum(2 * c for c in channels)  # scale and bias
    assert n_params == conv + bn == 4_304_320
    assert 4.2e6 <= n_params <= 4.4e6  # docs/method.md §3: about 4.3 M
    assert n_stats == bn  # running mean and var
    model_shapes = jax.eval_shape(
        lambda x: _model(heads=("label",)).init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, 64, 32), jnp.float32))
    assert jax.tree.map(lambda a: a.shape, model_shapes["params"]["encoder"]) == \
        jax.tree.map(lambda a: a.shape, shapes["params"])


@pytest.mark.parametrize("layout", cnn6.LAYOUTS)
@pytest.mark.parametrize("frames", [36, 17])  # 17 frames: floor pooling leaves 1 column
def test_encoder_matches_numpy_in_inference_mode(layout, frames):
    encoder = cnn6.CNN6Encoder(TINY, layout)
    x = _x(3, frames)
    variables = _init(encoder, x)
    features = encoder.apply(variables, x, train=False)
    assert features.shape == (3, TINY[-1]) and features.dtype == jnp.float32
    expected, _ = _numpy_forward(variables, x, layout)
    _close(features, expected)


@pytest.mark.parametrize("layout", cnn6.LAYOUTS)
def test_encoder_matches_numpy_in_training_mode_with_pytorch_momentum(layout):
    encoder = cnn6.CNN6Encoder(TINY, layout)
    x = _x(4)
    mask = np.array([1, 1, 0, 1], np.float32)
    variables = _init(encoder, x, seed=1)
    features, updates = encoder.apply(variables, x, train=True, mask=mask,
                                      mutable=["batch_stats"])
    expected, expected_stats = _numpy_forward(variables, x, layout, train=True, mask=mask)
    _close(np.asarray(features)[mask > 0], expected[mask > 0])
    jax.tree.map(_close, updates["batch_stats"], expected_stats)


def test_layouts_differ_and_shapes_of_non_square_inputs():
    x = _x(2, frames=48, mel=32)
    out = {}
    for layout in cnn6.LAYOUTS:
        encoder = cnn6.CNN6Encoder(TINY, layout)
        variables = _init(encoder, x)
        out[layout] = encoder.apply(variables, x, train=False)
        assert out[layout].shape == (2, TINY[-1])
    assert not np.allclose(out["reference"], out["panns"])


def test_mask_keeps_padding_out_of_batch_statistics():
    encoder = cnn6.CNN6Encoder(TINY)
    real = _x(5, seed=2)
    garbage = 100 * _x(3, seed=3) + 50
    padded = np.concatenate([real, garbage])
    mask = np.array([1] * 5 + [0] * 3, np.float32)
    variables = _init(encoder, real)
    apply = jax.jit(lambda v, x, m: encoder.apply(v, x, train=True, mask=m,
                                                  mutable=["batch_stats"]))
    want, want_stats = encoder.apply(variables, real, train=True, mutable=["batch_stats"])
    got, got_stats = apply(variables, padded, mask)
    _close(got[:5], want, rtol=1e-5)
    jax.tree.map(lambda a, b: _close(a, b, rtol=1e-5), got_stats, want_stats)
    _, unmasked_stats = encoder.apply(variables, padded, train=True, mutable=["batch_stats"])
    assert not np.allclose(unmasked_stats["batch_stats"]["conv_block1"]["bn"]["mean"],
                           want_stats["batch_stats"]["conv_block1"]["bn"]["mean"], rtol=1e-2)


def test_batchnorm_matches_pytorch_batchnorm2d():
    """Outputs, running statistics (momentum 0.1, unbiased variance) and input gradients of
    cnn6.BatchNorm equal torch.nn.BatchNorm2d's on the real rows; padded rows change nothing."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 3.0, size=(6, 5, 7, 3)).astype(np.float32)  # NHWC
    mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
    x[mask == 0] = 1e3 * rng.normal(size=x[mask == 0].shape)  # padding: large, finite
    upstream = rng.normal(size=x.shape).astype(np.float32)
    bn = cnn6.BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    variables = {"params": {"scale": np.array([0.5, 1.0, 2.0], np.float32),
                            "bias": np.array([0.1, -0.2, 0.3], np.float32)},
                 "batch_stats": {"mean": np.array([0.2, 0.0, -0.1], np.float32),
                                 "var": np.array([1.5, 0.8, 1.0], np.float32)}}

    def loss(x):
        y, updates = bn.apply(variables, x, True, mask, mutable=["batch_stats"])
        return jnp.sum(y * upstream * mask[:, None, None, None]), (y, updates)

    (_, (y, updates)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)

    ref = torch.nn.BatchNorm2d(3)  # momentum 0.1, eps 1e-5
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(variables["params"]["scale"]))
        ref.bias.copy_(torch.tensor(variables["params"]["bias"]))
        ref.running_mean.copy_(torch.tensor(variables["batch_stats"]["mean"]))
        ref.running_var.copy_(torch.tensor(variables["batch_stats"]["var"]))
    real = torch.tensor(x[mask > 0].transpose(0, 3, 1, 2), requires_grad=True)
    out = ref.train()(real)
    (out * torch.tensor(upstream[mask > 0].transpose(0, 3, 1, 2))).sum().backward()
    _close(np.asarray(y)[mask > 0], out.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5)
    _close(updates["batch_stats"]["mean"], ref.running_mean.numpy(), rtol=1e-5)
    _close(updates["batch_stats"]["var"], ref.running_var.numpy(), rtol=1e-5)
    _close(np.asarray(grad)[mask > 0], real.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4)
    assert np.all(np.asarray(grad)[mask == 0] == 0)
    # Inference mode: the running statistics, as PyTorch's eval().
    with torch.no_grad():
        expected = ref.eval()(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
    inference = bn.apply({**variables, "batch_stats": updates["batch_stats"]}, x, False)
    _close(inference, expected.transpose(0, 2, 3, 1), rtol=1e-5)


def test_train_and_inference_modes():
    encoder = cnn6.CNN6Encoder(TINY)
    x = _x(4)
    variables = _init(encoder, x)
    alone = encoder.apply(variables, x[:1], train=False)
    batched = encoder.apply(variables, x, train=False)
    _close(batched[:1], alone, rtol=1e-5)  # inference: rows are independent

    train_alone, _ = encoder.apply(variables, np.concatenate([x[:1], x[:1]]), train=True,
                                   mutable=["batch_stats"])
    train_batched, updates = encoder.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_batched[0], train_alone[0], rtol=1e-3)  # batch statistics
    assert not np.allclose(train_batched, batched, rtol=1e-3)
    old = variables["batch_stats"]["conv_block1"]["bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["conv_block1"]["bn"]["mean"], old)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state():
    x = _x(4)
    f32 = _model(TINY, num_classes=3, heads=("label",))
    bf16 = _model(TINY, num_classes=3, heads=("label",), dtype=jnp.bfloat16)
    variables = bf16.init(jax.random.key(0), x, train=False)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))

    out, updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(updates))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(out))
    ref_out, ref_updates = f32.apply(variables, x, train=True, mutable=["batch_stats"])
    _close(out["features"], ref_out["features"], rtol=5e-2)
    jax.tree.map(lambda a, b: _close(a, b, rtol=5e-2), updates, ref_updates)

    jaxpr = jax.make_jaxpr(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
    conv_inputs = [v.aval.dtype for eqn in jaxpr.jaxpr.eqns
                   if eqn.primitive.name == "conv_general_dilated" for v in eqn.invars]
    assert conv_inputs and all(d == jnp.bfloat16 for d in conv_inputs)


def test_initialisation_follows_panns_and_pytorch():
    model = _model((8, 16, 16, 32), num_classes=4, heads=("label",))
    params = model.init(jax.random.key(0), _x(1), train=False)["params"]
    kernel = np.asarray(params["encoder"]["conv_block4"]["conv"]["kernel"])  # (5, 5, 16, 32)
    bound = math.sqrt(6 / (25 * 16 + 25 * 32))  # xavier_uniform, as PANNs
    assert 0.97 * bound < np.abs(kernel).max() <= bound
    assert np.std(kernel) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    bn = params["encoder"]["conv_block1"]["bn"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)

    # PyTorch nn.Linear default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    for layer, fan_in in [(params["classifier"]["linear"], 32),
                          (params["proj_label"]["hidden"], 32),
                          (params["proj_label"]["out"], 512)]:
        bound = 1 / math.sqrt(fan_in)
        for leaf in (layer["kernel"], layer["bias"]):
            leaf = np.abs(np.asarray(leaf))
            assert 0 < leaf.min() and leaf.max() <= bound
            if leaf.size >= 100:  # a U(-b, b) sample of 100 stays under 0.9 b w.p. 3e-5
                assert leaf.max() > 0.9 * bound


def test_model_outputs_heads_and_methods():
    heads = ("label", "sex+age_group")
    config = ml_collections.ConfigDict({
        "method": "mscl", "loss": {"heads": ()},
        "model": {"name": "cnn6", "channels": TINY, "layout": "reference", "dtype": "float32",
                  "proj_hidden": 16, "proj_out": 8}})
    config.loss.heads = tuple((h, 0.5) for h in heads)
    model = build_model(config, num_classes=4)
    assert isinstance(model, Model) and isinstance(model.encoder, cnn6.CNN6Encoder)
    x = _x(3)
    variables = model.init(jax.random.key(0), x, train=False)
    assert set(variables["params"]) == {"encoder", "classifier", "proj_label",
                                        "proj_sex_age_group"}
    out = model.apply(variables, x, train=False)
    assert out["features"].shape == (3, TINY[-1]) and out["logits"].shape == (3, 4)
    assert set(out["proj"]) == set(heads)
    assert all(z.shape == (3, 8) for z in out["proj"].values())
    assert not np.allclose(out["proj"]["label"], out["proj"]["sex+age_group"])

    features = model.apply(variables, x, train=False, method="encode")
    _close(features, out["features"], rtol=1e-6)
    _close(model.apply(variables, features, method="classify"), out["logits"], rtol=1e-6)
    for head in heads:
        _close(model.apply(variables, features, head, method="project"), out["proj"][head],
               rtol=1e-6)
    with pytest.raises(KeyError, match="no projector for head 'age'"):
        model.apply(variables, features, "age", method="project")

    plain = _model(TINY, num_classes=2)
    assert plain.apply(plain.init(jax.random.key(0), x, train=False), x, train=False)["proj"] == {}


def test_bad_arguments_are_reported():
    x = _x(2)
    with pytest.raises(ValueError, match="distinct"):
        _model(TINY, heads=("a+b", "a_b")).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match=r"config.model.name must be one of \('cnn6'.*'cnn7'"):
        backbone("cnn7")
    with pytest.raises(ValueError, match="layout must be one of"):
        cnn6.CNN6Encoder(TINY, "sideways").init(jax.random.key(0), x, train=False)
    encoder = cnn6.CNN6Encoder(TINY)
    with pytest.raises(ValueError, match=r"at least 16 mel bins and 16 frames.*\(2, 64, 15\)"):
        encoder.init(jax.random.key(0), _x(2, frames=15), train=False)
    with pytest.raises(ValueError, match=r"\[batch, mel, frames\].*\(64, 36\)"):
        encoder.init(jax.random.key(0), x[0], train=False)
    with pytest.raises(ValueError, match="mask must have shape"):
        encoder.init(jax.random.key(0), x, train=True, mask=np.ones(3))


def test_save_and_load_pretrained_round_trip(tmp_path):
    encoder = cnn6.CNN6Encoder(TINY, "panns")
    x = _x(2)
    variables = _init(encoder, x, seed=4)
    out = tmp_path / "enc"
    cnn6.save_encoder(out, variables, {"channels": TINY, "layout": "panns",
                                       "source": {"checkpoint": "x.pth"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temporary leftovers
    assert cnn6.encoder_meta(out)["source"] == {"checkpoint": "x.pth"}

    loaded, loaded_vars = cnn6.load_pretrained(out)
    assert (tuple(loaded.channels), loaded.layout) == (TINY, "panns")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 loaded_vars, variables)
    _close(loaded.apply(loaded_vars, x, train=False), encoder.apply(variables, x, train=False),
           rtol=1e-6)
    assert cnn6.load_pretrained(out, layout="reference")[0].layout == "reference"

    with pytest.raises(FileExistsError, match="already exists"):
        cnn6.save_encoder(out, variables, {"channels": TINY})
    cnn6.save_encoder(out, variables, {"channels": TINY, "layout": "reference"}, overwrite=True)
    assert cnn6.load_pretrained(out)[0].layout == "reference"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_save_encoder_rejects_variables_that_do_not_fit(tmp_path):
    encoder = cnn6.CNN6Encoder(TINY)
    variables = _init(encoder, _x(1))
    del variables["batch_stats"]["conv_block2"]["bn"]["var"]
    variables["params"]["conv_block3"]["conv"]["kernel"] = np.zeros((3, 3, 4, 4), np.float32)
    with pytest.raises(ValueError) as err:
        cnn6.save_encoder(tmp_path / "enc", variables, {"channels": TINY})
    message = str(err.value)
    assert "missing batch_stats/conv_block2/bn/var (shape (4,))" in message
    assert "params/conv_block3/conv/kernel: shape (3, 3, 4, 4), expected (5, 5, 4, 4)" in message
    assert list(tmp_path.iterdir()) == []


def test_load_pretrained_reports_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*encoder.json not found"):
        cnn6.load_pretrained(tmp_path)

    encoder = cnn6.CNN6Encoder(TINY)
    out = cnn6.save_encoder(tmp_path / "enc", _init(encoder, _x(1)), {"channels": TINY})
    meta_file = out / "encoder.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "channels": [2, 4, 4, 16]}))
    with pytest.raises(ValueError, match=r"(?s)does not fit.*conv_block4/conv/kernel: shape "
                                         r"\(5, 5, 4, 8\), expected \(5, 5, 4, 16\)"):
        cnn6.load_pretrained(out)
    meta_file.write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="encoder.json: expected format 1"):
        cnn6.load_pretrained(out)
    meta_file.write_text("{not json")
    with pytest.raises(ValueError, match="encoder.json: not readable JSON"):
        cnn6.load_pretrained(out)
