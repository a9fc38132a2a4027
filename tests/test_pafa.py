"""PAFA's loss and projector (resp_jax/pafa.py, models/heads.py; docs/method.md §10) against
PyTorch re-implementations written here from the method's definition (a loop over the
patients, pairwise centroid distances with torch.pdist), and the 'pafa' batch loss.

Tolerances: loss 1e-5 relative, gradient 1e-4 relative to its largest entry (JAX float32
against PyTorch float64); projector outputs 1e-5 absolute (both float32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax import configuration, losses, optim, pafa, parallel
from resp_jax.models import build_model, heads
from resp_jax.train_state import create_train_state
from train_helpers import load_config

torch = pytest.importorskip("torch")

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


def torch_pafa(z, patients, lambda_pcsl, lambda_gpal, eps=1e-6):
    """PCSL and GPAL over the given rows (all taking part), patient by patient."""
    ids = sorted(set(patients.tolist()))
    if len(ids) < 2:
        return z.sum() * 0.0
    centroids, within = [], 0.0
    for p in ids:
        rows = z[torch.as_tensor(patients == p)]
        c = rows.mean(dim=0)
        centroids.append(c)
        within = within + ((rows - c) ** 2).sum()
    c = torch.stack(centroids)
    between = torch.pdist(c).pow(2).sum()  # every pair of distinct patients once
    gpal = ((c - c.mean(dim=0)) ** 2).sum(dim=1).mean()
    return lambda_pcsl * within / (between + eps) + lambda_gpal * gpal


def _case(seed, n=12, d=6, patients=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32) * 3
    pid = rng.integers(0, patients, n).astype(np.int32)
    mask = np.ones(n, np.float32)
    return z, pid, mask


@pytest.mark.parametrize("seed, lambdas", [(0, (50.0, 5e-4)), (1, (0.1, 0.1)), (2, (1.0, 2.0))])
def test_loss_and_gradient_match_torch(seed, lambdas):
    z, pid, mask = _case(seed)
    pid[3], mask[5], mask[9] = -1, 0.0, 0.0  # an unknown patient and two padding rows
    keep = (pid >= 0) & (mask > 0)
    zt = torch.tensor(z[keep], dtype=torch.float64, requires_grad=True)
    want = torch_pafa(zt, pid[keep], *lambdas)
    want.backward()
    fn = jax.jit(lambda z: pafa.pafa_loss(z, pid, mask, *lambdas)[0])
    got, grad = jax.value_and_grad(fn)(jnp.asarray(z))
    assert float(got) == pytest.approx(float(want.detach()), rel=LOSS_RTOL)
    theirs = zt.grad.numpy()
    assert np.abs(np.asarray(grad)[keep] - theirs).max() <= GRAD_RTOL * np.abs(theirs).max()
    assert not np.asarray(grad)[~keep].any()  # left-out rows get no gradient


def test_terms_and_degenerate_batches():
    z, pid, mask = _case(3)
    total, parts = pafa.pafa_loss(z, pid, mask, 2.0, 3.0)
    assert float(total) == pytest.approx(2 * float(parts["pcsl"]) + 3 * float(parts["gpal"]))
    value_and_grad = jax.jit(jax.value_and_grad(lambda z, p, m: pafa.pafa_loss(z, p, m)[0]))
    for pid_, mask_ in ((np.zeros(12, np.int32), mask),        # one patient
                        (pid, np.zeros(12, np.float32)),       # all padding
                        (np.where(np.arange(12) < 11, -1, 0).astype(np.int32), mask)):
        loss, grad = value_and_grad(z, pid_, mask_)
        assert float(loss) == 0.0 and np.isfinite(grad).all() and not np.asarray(grad).any()
    # Patients are compared by id, so their codes' order does not matter.
    relabelled = np.array([7, 2, 9, 4])[pid]
    np.testing.assert_allclose(pafa.pafa_loss(z, relabelled, mask)[0],
                               pafa.pafa_loss(z, pid, mask)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="patients"):
        pafa.pafa_loss(z, pid[:5], mask)


def test_same_value_sharded_over_two_devices():
    z, pid, mask = _case(4, n=16)
    mesh = parallel.make_mesh(jax.devices()[:2])
    sharded = parallel.to_global({"z": z, "pid": pid, "mask": mask}, mesh)
    fn = jax.jit(lambda b: pafa.pafa_loss(b["z"], b["pid"], b["mask"])[0])
    np.testing.assert_allclose(fn(sharded), fn({"z": z, "pid": pid, "mask": mask}), rtol=1e-6)


def test_attention_projector_matches_torch():
    """PAFA's ProjectionHead(attention=True, norm_type='ln'): softmax over tokens of
    Linear(D, 1) pools, then Linear -> LayerNorm -> ReLU -> Linear."""
    proj = heads.Projector(hidden=12, out=10, layer_norm=True, attention_pool=True)
    x = np.random.default_rng(0).normal(size=(3, 7, 8)).astype(np.float32)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: np.asarray(a) + 0.3 * rng.normal(size=a.shape).astype(
        np.float32), jax.jit(proj.init)(jax.random.key(0), x)["params"])  # LayerNorm away from 1
    got = jax.jit(proj.apply)({"params": params}, x)
    tn = torch.nn

    def linear(p):
        layer = tn.Linear(*np.shape(p["kernel"]))
        layer.weight.data = torch.tensor(np.asarray(p["kernel"]).T)
        layer.bias.data = torch.tensor(np.asarray(p["bias"]))
        return layer
    norm = tn.LayerNorm(12)
    norm.weight.data = torch.tensor(np.asarray(params["ln"]["scale"]))
    norm.bias.data = torch.tensor(np.asarray(params["ln"]["bias"]))
    with torch.no_grad():
        xt = torch.tensor(x)
        weights = torch.softmax(linear(params["attention"])(xt), dim=1)
        pooled = (xt * weights).sum(dim=1)
        want = tn.Sequential(linear(params["hidden"]), norm, tn.ReLU(),
                             linear(params["out"]))(pooled)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        proj.apply({"params": params}, x[:, 0])


def tiny_pafa_config(**model):
    config = load_config("beats_pafa", "quick")
    config.model.update(width=32, depth=1, heads=2, **model)
    config.model.beats.update(embed_dim=16, encoder_ffn_embed_dim=64, conv_pos=16,
                              conv_pos_groups=4)
    config.data.duration = 0.5  # 48 frames: 3 x 8 patches
    config.train.update(lr=1e-3, batch_size=8)
    config.loss.heads = (("patient", 1.0),)  # the recipe's weight (the quick preset's is 0.03)
    return configuration.resolve(config)


def test_pafa_batch_loss_is_ce_plus_the_patient_loss():
    config = tiny_pafa_config()
    assert configuration.fields(config) == ("label", "patient")
    assert (config.model.proj_hidden, config.model.proj_out) == (32, 32)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = build_model(config, 4)
    tx = optim.make_optimizer(config, steps_per_epoch=10)
    state = create_train_state(config, model, tx, (128, 48), mesh, pretrained=None)
    assert "attention" in state.params["proj_patient"]
    assert "ln" in state.params["proj_patient"] and state.batch_stats == {}
    rng = np.random.default_rng(0)
    batch = {"view1": rng.normal(size=(8, 128, 48)).astype(np.float32),
             "label": np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32),
             "patient": np.array([0, 0, 1, 1, 2, 2, 3, -1], np.int32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)}
    fn = losses.batch_loss(model, config, losses.heads(config))

    @jax.jit
    def both(params, batch):
        v = {"params": params}
        feats, tokens = model.apply(v, batch["view1"], False, method="encode", tokens=True)
        logits = model.apply(v, feats, method="classify")
        ce = losses.cross_entropy(logits, batch["label"], batch["mask"])
        z = model.apply(v, tokens, "patient", method="project")
        want = ce + pafa.pafa_loss(z, batch["patient"], batch["mask"], 50.0, 5e-4)[0]
        return fn(params, {}, batch, jax.random.key(0)), want  # no dropout: train == eval
    (loss, (_, terms)), want = both(state.params, batch)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert set(terms) == {"loss/ce", "loss/patient", "loss/pcsl", "loss/gpal"}


def test_config_checks():
    base = load_config("beats_pafa", "quick")
    for field, value, message in (
            ("loss.heads", (("label", 1.0),), "single head \\('patient'"),
            ("model.proj_pool", "max", "model.proj_pool must be one of"),
            ("loss.pafa_pcsl", -1.0, "pafa_pcsl must be >= 0"),
            ("model.proj_bn", True, "one norm, not both"),
            ("method", "hybrid", "PAFA's projector")):
        config = load_config("beats_pafa", "quick")
        section, key = field.rsplit(".", 1) if "." in field else ("", field)
        (config[section] if section else config)[key] = value
        with pytest.raises(ValueError, match=message):
            configuration.resolve(config)
    base.model.name = "ast"
    with pytest.raises(ValueError, match="returns pooled features only"):
        configuration.resolve(base)
