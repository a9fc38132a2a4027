"""Losses against a small independent PyTorch implementation written here (float64).

Values and gradients (w.r.t. embeddings and logits) must agree to rtol 1e-6 (atol 1e-12 for
gradient entries that are zero on both sides). The PyTorch side handles padding and unknown
labels the simple way, by dropping those rows before computing, so the comparison also checks
that such rows take no part at all in the JAX losses.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resp_jax import losses

torch = pytest.importorskip("torch", reason="the parity reference needs PyTorch (extra 'torch')")
F = torch.nn.functional

RTOL = 1e-6
ATOL = 1e-12


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- PyTorch reference (float64)

def _keep(labels, mask):
    return np.flatnonzero((np.asarray(mask) > 0) & (np.asarray(labels) >= 0))


def torch_ce(logits, labels, mask, weights):
    keep = torch.as_tensor(_keep(labels, mask))
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    return F.cross_entropy(logits[keep], torch.as_tensor(labels)[keep].long(), weight=w)


def _views(z, labels, mask):
    """The kept rows of both views, normalised as F.normalize does, and their labels."""
    n = len(labels)
    keep = torch.as_tensor(_keep(labels, mask))
    feats = torch.cat([F.normalize(z[:n][keep], dim=1), F.normalize(z[n:][keep], dim=1)])
    return feats, torch.as_tensor(labels)[keep].long()


def torch_supcon_code(z, labels, mask, t):
    """The authors' formulation: views concatenated, label-equality mask repeated 2x2, self
    removed by a logits mask, log-prob against the sum over all a != i, mean over positives,
    mean over the 2n anchors."""
    feats, lab = _views(z, labels, mask)
    n = len(lab)
    if n == 0:
        return z.sum() * 0
    same = torch.eq(lab.view(-1, 1), lab.view(1, -1)).double().repeat(2, 2)
    adc = feats @ feats.T / t
    logits = adc - adc.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1 - torch.eye(2 * n, dtype=torch.float64)
    pos = same * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    mean_log_prob_pos = (pos * log_prob).sum(1) / pos.sum(1)
    return -mean_log_prob_pos.view(2, n).mean()


def torch_supcon_paper(z, labels, mask, t):
    """The paper's eq. 2 as printed: denominator over the negatives N(i) only; anchors with no
    negative (empty denominator) left out of the mean."""
    feats, lab = _views(z, labels, mask)
    n = len(lab)
    same = torch.eq(lab.view(-1, 1), lab.view(1, -1)).double().repeat(2, 2)
    neg = 1 - same
    pos = same - torch.eye(2 * n, dtype=torch.float64)
    rows = torch.nonzero(neg.sum(1) > 0)[:, 0]
    if len(rows) == 0:
        return z.sum() * 0
    adc = feats @ feats.T / t
    s = adc[rows]
    log_prob = s - torch.log((torch.exp(s) * neg[rows]).sum(1, keepdim=True))
    return -((pos[rows] * log_prob).sum(1) / pos[rows].sum(1)).mean()


def torch_nt_xent(z, mask, t):
    """SimCLR's form: softmax cross-entropy of each view against the other view of its example,
    over every other kept view (self excluded)."""
    n = z.shape[0] // 2
    keep = torch.as_tensor(_keep(np.zeros(n), mask))
    m = len(keep)
    feats = torch.cat([F.normalize(z[:n][keep], dim=1), F.normalize(z[n:][keep], dim=1)])
    sim = feats @ feats.T / t
    sim = sim.masked_fill(torch.eye(2 * m, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)])
    return F.cross_entropy(sim, target)


TORCH_SUPCON = {"all": torch_supcon_code, "negatives": torch_supcon_paper}


# ---------------------------------------------------------------- helpers

def make_batch(seed, n=12, d=8, c=4, unknown=2, padding=2, scale=1.0):
    """Random views, labels in [0, c) with class c-1 given to exactly one real example, some
    unknown labels and some padding rows at the end (as the pipeline pads)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(2 * n, d)) * scale
    labels = rng.integers(0, c - 1, size=n)
    labels[0] = c - 1  # a class with a single member: its only positive is its other view
    labels[1:1 + unknown] = -1
    mask = np.ones(n)
    if padding:
        mask[-padding:] = 0
        labels[-padding:] = rng.integers(0, c, size=padding)  # garbage labels on padding
    return z, labels.astype(np.int32), mask.astype(np.float32)


def jax_value_and_grad(fn, *arrays):
    val, grads = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))(*arrays)
    return float(val), [np.asarray(g) for g in grads]


def torch_value_and_grad(fn, *arrays):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    val = fn(*ts)
    val.backward()
    return val.item(), [t.grad.numpy() for t in ts]


def assert_parity(jfn, tfn, *arrays):
    jv, jg = jax_value_and_grad(jfn, *[jnp.asarray(a, jnp.float64) for a in arrays])
    tv, tg = torch_value_and_grad(tfn, *arrays)
    np.testing.assert_allclose(jv, tv, rtol=RTOL)
    for a, b in zip(jg, tg):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    return jv


# ---------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_matches_torch(x64, weighted, seed):
    rng = np.random.default_rng(seed)
    n, c = 16, 4
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n).astype(np.int32)
    labels[3] = -1
    mask = np.ones(n, np.float32)
    mask[-3:] = 0
    weights = np.array([0.0800, 0.1358, 0.3295, 0.4547]) if weighted else None
    assert_parity(lambda lg: losses.cross_entropy(lg, labels, mask, weights),
                  lambda lg: torch_ce(lg, labels, mask, weights), logits)


def test_cross_entropy_weights_change_the_mean(x64):
    # Weighted mean is sum w_y nll / sum w_y, not the mean of w_y nll.
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    nll = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
    w = jnp.array([0.2, 0.8])
    expected = (0.2 * nll[0] + 0.2 * nll[1] + 0.8 * nll[2]) / 1.2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, None, w), expected,
                               rtol=1e-12)


def test_cross_entropy_bf16_logits_computed_in_float32():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(8, 4)) * 20, jnp.bfloat16)
    labels = jnp.asarray(rng.integers(0, 4, size=8))
    got = losses.cross_entropy(logits, labels)
    assert got.dtype == jnp.float32
    want = losses.cross_entropy(logits.astype(jnp.float32), labels)
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_cross_entropy_all_masked_is_zero_with_finite_grad():
    logits = jnp.ones((4, 3))
    labels = jnp.array([0, 1, -1, 2])
    mask = jnp.array([0.0, 0.0, 1.0, 0.0])  # the one real row has an unknown label
    val, g = jax.value_and_grad(losses.cross_entropy)(logits, labels, mask)
    assert float(val) == 0.0
    assert np.all(np.asarray(g) == 0)


def test_cross_entropy_label_out_of_range():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"row 1 has label 4"):
        losses.cross_entropy(logits, jnp.array([0, 4, 1]))
    # Under jit the same input gives NaN, not a silently wrong number ...
    assert np.isnan(jax.jit(losses.cross_entropy)(logits, jnp.array([0, 4, 1])))
    # ... but an out-of-range label on a padding row is ignored like the rest of that row.
    masked = losses.cross_entropy(logits, jnp.array([0, 4, 1]), jnp.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(masked, np.log(4), rtol=1e-6)


def test_cross_entropy_shape_errors():
    with pytest.raises(ValueError, match="logits must have shape"):
        losses.cross_entropy(jnp.zeros(4), jnp.zeros(4, int))
    with pytest.raises(ValueError, match=r"class_weights must have shape \[3\]"):
        losses.cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, int), None, jnp.ones(4))


# ---------------------------------------------------------------- SupCon

@pytest.mark.parametrize("denominator", ["all", "negatives"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_matches_torch(x64, denominator, seed):
    z, labels, mask = make_batch(seed)
    assert_parity(lambda zz: losses.supcon(zz, labels, mask, 0.06, denominator),
                  lambda zz: TORCH_SUPCON[denominator](zz, labels, mask, 0.06), z)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_supcon_without_padding_or_unknown(x64, denominator):
    z, labels, mask = make_batch(5, n=10, c=3, unknown=0, padding=0)
    assert_parity(lambda zz: losses.supcon(zz, labels, None, 0.1, denominator),
                  lambda zz: TORCH_SUPCON[denominator](zz, labels, mask, 0.1), z)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_supcon_large_norm_at_low_temperature(x64, denominator):
    z, labels, mask = make_batch(7, scale=1e4)
    val = assert_parity(lambda zz: losses.supcon(zz, labels, mask, 0.06, denominator),
                        lambda zz: TORCH_SUPCON[denominator](zz, labels, mask, 0.06), z)
    # The loss sees directions only.
    np.testing.assert_allclose(losses.supcon(z / 1e4, labels, mask, 0.06, denominator), val,
                               rtol=1e-10)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_supcon_float32_stable_at_tiny_temperature(x64, denominator):
    # At t = 0.005 logits reach 200: exp overflows float32 without max subtraction.
    z, labels, mask = make_batch(8)
    ref = TORCH_SUPCON[denominator](torch.tensor(z), labels, mask, 0.005)
    z32 = jnp.asarray(z, jnp.float32)
    val, g = jax.value_and_grad(losses.supcon)(z32, labels, mask, 0.005, denominator)
    assert val.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-4)


def test_supcon_denominators_differ_as_the_equations_say(x64):
    # 'all' adds the positives to the denominator, so its loss is the larger one.
    z, labels, mask = make_batch(4)
    code = losses.supcon(z, labels, mask, 0.06, "all")
    paper = losses.supcon(z, labels, mask, 0.06, "negatives")
    assert float(code) > float(paper)


def test_supcon_ignores_padding_and_unknown_rows_whatever_they_hold(x64):
    z, labels, mask = make_batch(9)
    n = len(labels)
    dead = np.flatnonzero((mask == 0) | (labels < 0))
    poisoned = z.copy()
    poisoned[dead] = np.nan
    poisoned[dead + n] = 1e30
    poisoned_labels = labels.copy()
    poisoned_labels[mask == 0] = labels[0]  # padding with the single-member class's label
    for den in ("all", "negatives"):
        clean = losses.supcon(z, labels, mask, 0.06, den)
        val, g = jax.value_and_grad(losses.supcon)(poisoned, poisoned_labels, mask, 0.06, den)
        np.testing.assert_allclose(val, clean, rtol=1e-12)
        g = np.asarray(g)
        assert np.all(np.isfinite(g))
        assert np.all(g[dead] == 0) and np.all(g[dead + n] == 0)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_supcon_zero_embedding_on_a_real_row(x64, denominator):
    # F.normalize maps 0 to 0 with gradient 1/eps; sqrt's gradient at 0 would give NaN.
    z, labels, mask = make_batch(15, padding=0, unknown=0)
    z[3] = 0.0
    assert_parity(lambda zz: losses.supcon(zz, labels, mask, 0.06, denominator),
                  lambda zz: TORCH_SUPCON[denominator](zz, labels, mask, 0.06), z)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_supcon_all_masked_gives_zero_and_finite_grad(denominator):
    z = jnp.zeros((8, 5))  # padding rows are often all zero: the norm must not give NaN
    for labels, mask in ((jnp.array([0, 1, 2, 3]), jnp.zeros(4)),
                         (jnp.full(4, -1), jnp.ones(4))):
        val, g = jax.value_and_grad(losses.supcon)(z, labels, mask, 0.06, denominator)
        assert float(val) == 0.0
        assert np.all(np.asarray(g) == 0)


def test_supcon_one_label_only(x64):
    # One distinct label: 'negatives' has no denominator for any anchor -> 0; 'all' does not.
    z, _, _ = make_batch(10, n=6, unknown=0, padding=0)
    labels = np.zeros(6, np.int32)
    mask = np.ones(6)
    val, g = jax.value_and_grad(losses.supcon)(z, labels, mask, 0.06, "negatives")
    assert float(val) == 0.0 and np.all(np.asarray(g) == 0)
    assert float(torch_supcon_paper(torch.tensor(z), labels, mask, 0.06)) == 0.0
    assert_parity(lambda zz: losses.supcon(zz, labels, mask, 0.06, "all"),
                  lambda zz: torch_supcon_code(zz, labels, mask, 0.06), z)


def test_supcon_argument_errors():
    z = jnp.zeros((6, 4))
    with pytest.raises(ValueError, match=r"z must have shape \[2N, D\] = \[8, D\]"):
        losses.supcon(z, jnp.zeros(4, int))
    with pytest.raises(ValueError, match="denominator must be one of"):
        losses.supcon(z, jnp.zeros(3, int), denominator="positives")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.supcon(z, jnp.zeros(3, int), temperature=0.0)
    with pytest.raises(ValueError, match=r"mask must have shape \[3\]"):
        losses.supcon(z, jnp.zeros(3, int), jnp.ones(6))


# ---------------------------------------------------------------- NT-Xent, hybrid, multi-head

@pytest.mark.parametrize("seed", [0, 1])
def test_nt_xent_matches_simclr_form(x64, seed):
    z, _, mask = make_batch(seed, n=10, padding=3)
    assert_parity(lambda zz: losses.nt_xent(zz, mask, 0.06),
                  lambda zz: torch_nt_xent(zz, mask, 0.06), z)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_hybrid_matches_torch(x64, denominator, alpha):
    z, labels, mask = make_batch(11)
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(z.shape[0], 4)) * 2
    weights = np.array([0.0800, 0.1358, 0.3295, 0.4547])
    l2, m2 = np.tile(labels, 2), np.tile(mask, 2)

    def ref(lg, zz):
        return (alpha * torch_ce(lg, l2, m2, weights)
                + (1 - alpha) * TORCH_SUPCON[denominator](zz, labels, mask, 0.06))

    assert_parity(lambda lg, zz: losses.hybrid(lg, zz, labels, mask, weights, alpha, 0.06,
                                               denominator), ref, logits, z)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_multi_head_matches_torch(x64, denominator):
    z_cls, labels, mask = make_batch(12)
    rng = np.random.default_rng(12)
    z_meta = rng.normal(size=z_cls.shape) * 3
    meta = rng.integers(0, 4, size=len(labels)).astype(np.int32)
    meta[5] = -1  # unknown sex/age on a row whose class is known
    weights = {"label": 0.75, "sex+age_group": 0.25}
    labels_by_head = {"label": labels, "sex+age_group": meta, "device": meta}  # extra field ok

    def jfn(a, b):
        return losses.multi_head({"label": a, "sex+age_group": b}, labels_by_head, mask,
                                 weights, 0.06, denominator)[0]

    def tfn(a, b):
        sc = TORCH_SUPCON[denominator]
        return 0.75 * sc(a, labels, mask, 0.06) + 0.25 * sc(b, meta, mask, 0.06)

    assert_parity(jfn, tfn, z_cls, z_meta)
    total, per_head = losses.multi_head({"label": z_cls, "sex+age_group": z_meta},
                                        labels_by_head, mask, weights, 0.06, denominator)
    assert set(per_head) == {"label", "sex+age_group"}
    np.testing.assert_allclose(per_head["sex+age_group"],
                               float(TORCH_SUPCON[denominator](torch.tensor(z_meta), meta,
                                                               mask, 0.06)), rtol=RTOL)
    np.testing.assert_allclose(total, 0.75 * per_head["label"]
                               + 0.25 * per_head["sex+age_group"], rtol=1e-12)


def test_multi_head_key_mismatch_is_an_error():
    z = jnp.zeros((4, 3))
    lab = {"label": jnp.zeros(2, int)}
    with pytest.raises(KeyError, match=r"projections without a weight \['sex'\]"):
        losses.multi_head({"label": z, "sex": z}, lab, None, {"label": 1.0})
    with pytest.raises(KeyError, match=r"labels missing \['sex'\]"):
        losses.multi_head({"label": z, "sex": z}, lab, None, {"label": 0.5, "sex": 0.5})


# ---------------------------------------------------------------- jit and sharding

def test_losses_jit_with_traced_temperature():
    z, labels, mask = make_batch(13)
    logits = np.random.default_rng(13).normal(size=(z.shape[0], 4))
    for den in ("all", "negatives"):
        eager = losses.supcon(z, labels, mask, 0.06, den)
        jitted = jax.jit(losses.supcon, static_argnames="denominator")(
            z, labels, mask, jnp.float32(0.06), denominator=den)
        np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    hyb = jax.jit(lambda lg, zz: losses.hybrid(lg, zz, labels, mask, jnp.ones(4) / 4))
    np.testing.assert_allclose(hyb(logits, z), losses.hybrid(logits, z, labels, mask,
                                                             jnp.ones(4) / 4), rtol=1e-6)
    nt = jax.jit(losses.nt_xent)
    np.testing.assert_allclose(nt(z, mask, 0.06), losses.nt_xent(z, mask, 0.06), rtol=1e-6)


def test_losses_on_batch_sharded_over_two_devices():
    if jax.device_count() < 2:
        pytest.skip("needs 2 devices (tests/conftest.py sets jax_num_cpu_devices=2)")
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    rows = NamedSharding(mesh, P("batch"))
    rows2 = NamedSharding(mesh, P("batch", None))

    z, labels, mask = make_batch(14, n=16, padding=3)
    z_meta = np.random.default_rng(14).normal(size=z.shape)
    meta = np.random.default_rng(15).integers(-1, 4, size=16).astype(np.int32)
    logits = np.random.default_rng(16).normal(size=(32, 4))
    weights = jnp.array([0.0800, 0.1358, 0.3295, 0.4547])

    def all_losses(lg, za, zb, lab, mt, m):
        out = {den: losses.supcon(za, lab, m, 0.06, den) for den in ("all", "negatives")}
        out["nt_xent"] = losses.nt_xent(za, m, 0.06)
        out["ce"] = losses.cross_entropy(lg, jnp.tile(lab, 2), jnp.tile(m, 2), weights)
        out["hybrid"] = losses.hybrid(lg, za, lab, m, weights)
        out["multi"] = losses.multi_head({"label": za, "meta": zb}, {"label": lab, "meta": mt},
                                         m, {"label": 0.75, "meta": 0.25})[0]
        return out

    def loss_and_grads(*args):
        vals = all_losses(*args)
        grads = jax.grad(lambda lg, za, zb: sum(all_losses(lg, za, zb, *args[3:]).values()),
                         argnums=(0, 1, 2))(*args[:3])
        return vals, grads

    args = (logits, z, z_meta, labels, meta, mask)
    f32 = [jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a) for a in args]
    want_vals, want_grads = jax.jit(loss_and_grads)(*f32)

    placed = [jax.device_put(a, rows2 if a.ndim == 2 else rows) for a in f32]
    assert len(placed[1].addressable_shards) == 2 and not placed[1].is_fully_replicated
    got_vals, got_grads = jax.jit(loss_and_grads)(*placed)
    for k in want_vals:
        np.testing.assert_allclose(got_vals[k], want_vals[k], rtol=1e-6, err_msg=k)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
