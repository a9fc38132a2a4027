"""The HTS-AT encoder's own behaviour (docs/method.md §12): the scanned and unrolled stages agree,
bfloat16 compute stays close, the frame stretch is PyTorch's bicubic interpolation, bad inputs
and mismatched converted encoders are refused; the configs, front-end sample rates and
prepared-copy keys around it. Parity with the references: tests/test_htsat_parity.py."""

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resp_jax import configuration, optim
from resp_jax.data import features, htsat_frontends, prepared_copies
from resp_jax.models import htsat
from resp_jax.models.htsat_layers import bicubic_taps, shift_mask, stretch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=4, embed_dim=8,
            depths=(2, 4), heads=(2, 4), window_size=4, projection_dim=6, tscam_classes=3)


def _config(name, arg=None):
    return runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"](arg)


@pytest.mark.slow  # three compiles of the encoder
def test_scanned_stage_equals_unrolled_blocks_and_bfloat16_stays_close():
    """Stage 2 (4 blocks) runs as a scan over two (regular, shifted) pairs: the same numbers
    as the blocks one by one; bfloat16 compute within 5 % of float32."""
    enc = htsat.HTSATEncoder(**TINY)
    x = jax.random.normal(jax.random.key(0), (2, 40, 16))
    variables = jax.jit(lambda key: enc.init(key, x, train=False))(jax.random.key(1))
    scanned = jax.jit(lambda v: enc.apply(v, x, train=False, outputs=True))(variables)
    unrolled = jax.jit(lambda v: enc.clone(scan=False).apply(v, x, train=False,
                                                              outputs=True))(variables)
    for key in ("latent", "projection", "clipwise"):
        np.testing.assert_allclose(scanned[key], unrolled[key], rtol=1e-5, atol=1e-6)
    half = jax.jit(lambda v: enc.clone(dtype=jnp.bfloat16).apply(v, x, train=False))(variables)
    assert half.dtype == jnp.float32
    rel = float(jnp.abs(half - scanned["latent"]).max() / jnp.abs(scanned["latent"]).max())
    assert rel < 5e-2


def test_stretch_is_pytorchs_bicubic_interpolation():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 251, 8)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], (1024, 8),
                                             mode="bicubic", align_corners=True)[:, 0].numpy()
    # PyTorch places the source positions in float32 (here float64): 6e-5 apart at most
    np.testing.assert_allclose(np.asarray(stretch(jnp.asarray(x), 1024)), theirs, atol=2e-4)
    index, weight = bicubic_taps(251, 1024)
    np.testing.assert_allclose(weight.sum(axis=1), 1.0)  # so a per-bin affine commutes with it
    assert index.min() == 0 and index.max() == 250


def test_shift_mask_separates_the_wrapped_regions():
    mask = shift_mask(8, 8, 4, 2)  # 4 windows of 16 tokens
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the first window holds one region only
    assert (mask[3] != 0).any() and (np.diagonal(mask, axis1=1, axis2=2) == 0).all()


def test_bad_inputs_are_refused():
    enc = htsat.HTSATEncoder(**TINY)
    with pytest.raises(ValueError, match="2 to 256 frames"):
        enc.init(jax.random.key(0), jnp.zeros((1, 300, 16)), train=False)
    with pytest.raises(ValueError, match=r"\[batch, frames, 16\]"):
        enc.init(jax.random.key(0), jnp.zeros((1, 40, 12)), train=False)
    with pytest.raises(ValueError, match="divisible by 3 heads"):
        htsat.HTSATEncoder(**{**TINY, "heads": (3, 4)}).check()


@pytest.mark.slow  # a compile, an orbax round trip and a config resolution: ~10 s
def test_converted_encoder_round_trip_and_mismatch(tmp_path):
    enc = htsat.HTSATEncoder(**TINY)
    init = jax.jit(lambda key: enc.init(key, jnp.zeros((1, 8, 16)), train=False))
    variables = jax.tree.map(np.asarray, init(jax.random.key(0)))
    meta = {k: TINY.get(k, htsat.ARCH_DEFAULTS[k]) for k in htsat.ARCH_FIELDS}
    out = htsat.save_encoder(tmp_path / "enc", variables, meta)
    loaded, restored = htsat.load_pretrained(out)
    assert loaded.depths == (2, 4) and loaded.tscam_classes == 3
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    with pytest.raises(ValueError, match="do not fit"):
        htsat.save_encoder(tmp_path / "bad", variables, {**meta, "embed_dim": 16})
    config = _config("opera_ce", "quick")
    config.model.init_from = str(out)
    with pytest.raises(ValueError, match="does not match config.model.htsat"):
        htsat.pretrained(configuration.resolve(config), (16, 40))
    assert not (tmp_path / "bad").exists()


def test_configs_resolve_with_their_front_ends_and_rates():
    clap = configuration.resolve(_config("clap_ce"))
    assert (clap.data.frontend, clap.data.sample_rate, clap.model.htsat.output,
            clap.model.htsat.projection_dim) == ("clap", 48000, "projection", 512)
    assert features.input_shape(clap) == (64, 1001)  # CLAP pads every clip to 10 s
    assert htsat.encoder(clap).width == 512
    opera = configuration.resolve(_config("opera_ce"))
    assert features.input_shape(opera) == (64, 256)  # 8.18 s, as OPERA fine-tunes
    assert (opera.train.schedule, opera.train.clip_norm, opera.model.drop_path) == \
        ("exponential", 1.0, 0.1)
    with pytest.raises(ValueError, match="model.init_run=WORKDIR"):  # a probe of nothing
        configuration.resolve(_config("opera_probe"))
    bad = _config("clap_ce")
    bad.data.sample_rate = 16000
    with pytest.raises(ValueError, match="data.sample_rate=48000"):
        configuration.resolve(bad)
    with pytest.raises(ValueError, match="at most 10 s"):
        htsat_frontends.shape("clap", 48000 * 11)


def test_probe_of_a_finished_run_takes_its_architecture(tmp_path):
    """model.init_run: every model.htsat placeholder of configs/opera_probe.py takes the
    architecture a finished opera_mscl:quick run recorded; another front end is refused."""
    run = configuration.resolve(_config("opera_mscl", "quick"))
    (tmp_path / "config.json").write_text(run.to_json())
    (tmp_path / "results.json").write_text("{}")
    probe = _config("opera_probe")
    probe.model.init_run = str(tmp_path)
    probe = configuration.resolve(probe)
    assert probe.method == "linear_probe" and probe.train.epochs == 0
    assert htsat.encoder(probe) == htsat.encoder(run)
    assert probe.model.htsat.depths == (2, 2)
    other = _config("clap_ce")
    other.model.init_run = str(tmp_path)
    with pytest.raises(ValueError, match="data.frontend is 'opera'"):
        configuration.resolve(other)
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        (tmp_path / "results.json").unlink()
        configuration.resolve(probe)


def test_prepared_copies_are_keyed_by_sample_rate(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    at16 = prepared_copies.config_name("icbhi", tmp_path)
    assert at16 == prepared_copies.config_name("icbhi", tmp_path, sample_rate=16000)
    assert at16 != prepared_copies.config_name("icbhi", tmp_path, sample_rate=48000)


def test_opera_optimiser_pieces():
    """'exponential': lr x 0.99^epoch; the head's L2 apart from the encoder's; the gradient
    clipped after the L2 is added (OPERA's L2 lives in its loss)."""
    config = _config("opera_ce")
    config.train.lr = 1e-4
    rate = optim.schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose([rate(0), rate(9), rate(10), rate(35)],
                               [1e-4, 1e-4, 0.99e-4, 1e-4 * 0.99 ** 3], rtol=1e-6)
    params = {"encoder": {"w": jnp.full(3, 2.0)}, "classifier": {"w": jnp.full(3, 2.0)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    pre = optax.chain(*optim.l2_and_clip(0.1, head_weight_decay=0.5))
    grads = pre.update(zero, pre.init(params), params)[0]
    np.testing.assert_allclose(grads["encoder"]["w"], 0.2)
    np.testing.assert_allclose(grads["classifier"]["w"], 1.0)
    pre = optax.chain(*optim.l2_and_clip(0.1, head_weight_decay=0.5, clip_norm=1.0))
    grads = pre.update(zero, pre.init(params), params)[0]
    norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))))
    np.testing.assert_allclose(norm, 1.0, rtol=1e-5)  # sqrt(3 (0.2^2 + 1)) > 1: clipped
    np.testing.assert_allclose(grads["classifier"]["w"] / grads["encoder"]["w"], 5.0)
