"""Training losses (docs/method.md §4): weighted cross-entropy, SupCon, NT-Xent, hybrid,
multi-head SupCon, and `batch_loss`, the loss of one training batch for every method
(Patch-Mix CL's own losses live in `resp_jax.patchmix`, docs/method.md §9, PAFA's in
`resp_jax.pafa`, §10).

Every function is plain array code on the whole (global) batch, so it is jit-able and gives the
same value whether the batch lives on one device or is sharded over several: XLA inserts the
collectives. Padding rows (``mask`` 0) and rows whose label is unknown (-1) take no part in a
loss, and a loss with nothing to average over is 0, never NaN, with finite gradients.

Computation runs in float32 at least (float64 stays float64), whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp

from resp_jax import pafa, patchmix
from resp_jax.models.heads import inputs as model_inputs

DENOMINATORS = ("all", "negatives")  # loss.denominator: the code's | the paper's eq. 2
INSTANCE = "instance"  # pseudo-field of a head: each example its own class (NT-Xent)

# F.normalize's default: z / max(||z||, eps).
_NORM_EPS = 1e-12


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_vector(name: str, x, n: int) -> None:
    if jnp.ndim(x) != 1 or jnp.shape(x)[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {jnp.shape(x)}")


def _valid(labels, mask) -> jax.Array:
    """Rows that take part: a real example (mask > 0) with a known label (>= 0)."""
    valid = jnp.asarray(labels) >= 0
    if mask is not None:
        valid = valid & (jnp.asarray(mask) > 0)
    return valid


def cross_entropy(logits, labels, mask=None, class_weights=None) -> jax.Array:
    """PyTorch ``CrossEntropyLoss(weight=class_weights)`` with mean reduction, over valid rows.

    loss = sum_i w[y_i] * nll_i / sum_i w[y_i] over rows with mask > 0 and label >= 0 (w = 1
    without weights). Log-softmax runs in float32 even for bf16 logits. No valid row gives 0.
    A label >= C on a real row is an error: ValueError when the inputs are concrete, NaN under
    jit (never a silently wrong loss).
    """
    logits = jnp.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C], got {logits.shape}")
    n, c = logits.shape
    labels = jnp.asarray(labels)
    _check_vector("labels", labels, n)
    if mask is not None:
        _check_vector("mask", mask, n)
    if class_weights is not None:
        _check_vector("class_weights", class_weights, c)
    real = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask) > 0
    bad = real & (labels >= c)
    if _is_concrete(bad) and bool(jnp.any(bad)):
        first = int(jnp.argmax(bad))
        raise ValueError(f"labels must lie in [-1, {c - 1}] for {c} classes; row {first} "
                         f"has label {int(labels[first])}")

    dtype = _compute_dtype(logits.dtype)
    valid = _valid(labels, mask)
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    if class_weights is None:
        w = jnp.ones((n,), dtype)
    else:
        w = jnp.asarray(class_weights, dtype)[safe]
    w = jnp.where(valid, w, 0)
    total = jnp.sum(jnp.where(valid, w * nll, 0))
    norm = jnp.sum(w)
    loss = total / jnp.where(norm > 0, norm, 1)
    return jnp.where(jnp.any(bad), jnp.nan, loss)


def _l2_normalize(z: jax.Array) -> jax.Array:
    # rsqrt(max(|z|^2, eps^2)) equals 1 / max(|z|, eps) but, unlike sqrt, has a finite gradient
    # at z = 0 (zeroed padding rows).
    sq = jnp.sum(z * z, axis=-1, keepdims=True)
    return z * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS ** 2))


def supcon(z, labels, mask=None, temperature=0.06, denominator: str = "all") -> jax.Array:
    """Supervised contrastive loss over the 2N views (docs/method.md §4).

    ``z`` is [2N, D], rows 0..N-1 the first view and N..2N-1 the second view of the same N
    examples; ``labels`` [N] (-1 unknown), ``mask`` [N] (> 0 real, 0 padding). ``z`` is
    L2-normalised here. With s_ij = z_i . z_j / t, each participating anchor i contributes

        l_i = -1/|P(i)| sum_{p in P(i)} (s_ip - log sum_{a in D(i)} exp(s_ia)),

    P(i) = {p != i : y_p = y_i} (always holds i's other view), and D(i) is
      - 'all' (the authors' code, default): every a != i, positives included;
      - 'negatives' (the paper's eq. 2, as printed): N(i) = {n : y_n != y_i} only, so the
        positive of the numerator is NOT in its denominator:
            l_i = -1/|P(i)| sum_p log( exp(s_ip) / sum_{n in N(i)} exp(s_in) ).
        An anchor with no negative in the batch has an empty denominator (its term is
        undefined); it is left out of the mean, like an invalid row.
    The loss is the mean of l_i over participating anchors (the code's mean; the paper's eq. 2
    writes a sum, which only rescales it). Rows with an unknown label or mask 0 are zeroed
    before anything else and are neither anchors, positives, nor in any denominator; no
    participating anchor gives 0. Stable at small t: the log-sum-exp subtracts the row
    maximum, and masked entries never reach exp. The similarity matmul runs at HIGHEST
    precision, because at t = 0.06 a bf16 matmul's error is multiplied by ~17.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = jnp.asarray(z)
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {labels.shape}")
    n = labels.shape[0]
    if z.ndim != 2 or z.shape[0] != 2 * n:
        raise ValueError(f"z must have shape [2N, D] = [{2 * n}, D] (two views of the {n} "
                         f"labelled examples), got {z.shape}")
    if mask is not None:
        _check_vector("mask", mask, n)

    dtype = _compute_dtype(z.dtype)
    valid = jnp.tile(_valid(labels, mask), 2)
    y = jnp.tile(labels, 2)
    z = jnp.where(valid[:, None], z.astype(dtype), 0)
    z = _l2_normalize(z)
    sim = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / jnp.asarray(
        temperature, dtype)

    pair = valid[:, None] & valid[None, :] & ~jnp.eye(2 * n, dtype=bool)
    same = y[:, None] == y[None, :]
    pos = pair & same
    den = pair if denominator == "all" else pair & ~same

    has_den = jnp.any(den, axis=1)
    row_max = jnp.max(jnp.where(den, sim, -jnp.inf), axis=1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(has_den[:, None], row_max, 0))
    sum_exp = jnp.sum(jnp.exp(jnp.where(den, sim - row_max, -jnp.inf)), axis=1)
    lse = jnp.log(jnp.where(has_den, sum_exp, 1)) + row_max[:, 0]

    n_pos = jnp.sum(pos, axis=1)
    pos_sum = jnp.sum(jnp.where(pos, sim, 0), axis=1)
    anchor = valid & has_den & (n_pos > 0)
    per_anchor = -(pos_sum - n_pos * lse) / jnp.maximum(n_pos, 1)
    count = jnp.sum(anchor)
    return jnp.sum(jnp.where(anchor, per_anchor, 0)) / jnp.maximum(count, 1).astype(dtype)


def nt_xent(z, mask=None, temperature=0.06, denominator: str = "all") -> jax.Array:
    """NT-Xent (SimCLR): SupCon where each example is its own class, so the other view of the
    same example is the only positive. ``z`` [2N, D] as in `supcon`, ``mask`` [N]."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[0] % 2:
        raise ValueError(f"z must have shape [2N, D], got {z.shape}")
    n = z.shape[0] // 2
    return supcon(z, jnp.arange(n, dtype=jnp.int32), mask, temperature, denominator)


def hybrid(logits, z, labels, mask=None, class_weights=None, alpha=0.5, temperature=0.06,
           denominator: str = "all") -> jax.Array:
    """alpha * CE + (1 - alpha) * SupCon (paper eq. 4 and docs/method.md §4). CE is on both views'
    ``logits`` [2N, C] (rows ordered like ``z`` [2N, D]): one weighted mean over the 2N rows.
    (The authors' code puts alpha on SupCon instead; at the published alpha = 0.5 it is the
    same loss.)"""
    labels = jnp.asarray(labels)
    n = labels.shape[0]
    if jnp.ndim(logits) != 2 or jnp.shape(logits)[0] != 2 * n:
        raise ValueError(f"logits must have shape [2N, C] = [{2 * n}, C] (both views), "
                         f"got {jnp.shape(logits)}")
    mask2 = None if mask is None else jnp.tile(jnp.asarray(mask), 2)
    ce = cross_entropy(logits, jnp.tile(labels, 2), mask2, class_weights)
    scl = supcon(z, labels, mask, temperature, denominator)
    return alpha * ce + (1 - alpha) * scl


def multi_head(proj: Mapping[str, jax.Array], labels: Mapping[str, jax.Array], mask,
               weights: Mapping[str, float], temperature=0.06, denominator: str = "all"):
    """M-SCL (paper eq. 3): sum over heads k of weights[k] * SupCon(proj[k], labels[k]).

    Heads are the keys of ``weights``; ``proj`` must have exactly those keys (a projector
    without a weight, or a weight without a projector, is a config error) and ``labels`` at
    least those (it may carry other fields). Each head masks its own unknown labels. Returns
    (total, {head: unweighted SupCon of that head}).
    """
    heads = list(weights)
    if not heads:
        raise ValueError("multi_head needs at least one head in weights")
    missing_proj = [h for h in heads if h not in proj]
    extra_proj = [h for h in proj if h not in weights]
    missing_labels = [h for h in heads if h not in labels]
    if missing_proj or extra_proj or missing_labels:
        raise KeyError(f"multi_head heads {heads} do not match: projections missing "
                       f"{missing_proj}, projections without a weight {extra_proj}, labels "
                       f"missing {missing_labels}")
    per_head = {h: supcon(proj[h], labels[h], mask, temperature, denominator) for h in heads}
    total = sum(weights[h] * per_head[h] for h in heads)
    return total, per_head


HEADS_FORMAT = "(('label', 0.5), ('device', 0.25), ...): (field, weight) pairs"


def heads(config) -> tuple[tuple[str, float], ...]:
    """The contrastive heads as (field, weight) pairs; none for 'ce'. A malformed entry (on
    the command line, "(('label', 0.5))" is one pair, not a tuple of pairs) is a ValueError
    that names it, not an unpacking error."""
    if config.method == "ce":
        return ()
    out = []
    for k, head in enumerate(config.loss.heads):
        if not (isinstance(head, (tuple, list)) and len(head) == 2 and isinstance(head[0], str)):
            raise ValueError(f"config.loss.heads[{k}] is {head!r}; expected {HEADS_FORMAT}")
        field, weight = head
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight) or weight < 0:
            raise ValueError(f"config.loss.heads[{k}]: weight {weight!r} of head {field!r} is "
                             f"not a number >= 0; expected {HEADS_FORMAT}")
        out.append((field, float(weight)))
    return tuple(out)


def batch_loss(model, config, heads, class_weights=None):
    """``f(params, batch_stats, batch, rng) -> (loss, (new batch_stats, terms))``: the loss of
    one training batch under ``config.method`` with the contrastive ``heads`` ((field, weight)
    pairs, `heads`).

    'ce' classifies ``view1``; the others encode both views (in two calls when
    ``model.bn_per_view``, so BatchNorm statistics are per view, as in the reference), project
    them with one projector per head and sum the weighted SupCon terms; 'hybrid' adds CE on
    both views' logits: alpha * CE + (1 - alpha) * contrastive. ``terms`` holds each head's
    unweighted loss as ``loss/<field>`` and the CE term as ``loss/ce``. ``rng`` feeds dropout
    in backbones that have it, and Patch-Mix's draws.

    'patchmix_cl' (an AST, one head ('instance', w)): CE on the classifier of ``view1``'s
    features plus w x `patchmix.patch_mix_contrastive_loss` between the projections of a
    second, patch-mixed pass over the same ``view1`` and the clean features (gradient
    stopped), as Patch-Mix's main.py; lam ~ Beta(loss.mix_beta, loss.mix_beta) per batch.

    'pafa' (one head (`metadata.PATIENT`, w)): CE on the classifier of ``view1``'s features
    plus w x `pafa.pafa_loss` of the head's projections (of the encoder's tokens with
    ``model.proj_pool='attention'``) and the batch's patient codes, as PAFA's main.py.
    """
    method = config.method
    weights = dict(heads)
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    proj_bn = bool(config.model.get("proj_bn", False))

    def encode(params, batch_stats, x, mask, rng, **kw):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                   mask, method="encode", mutable=["batch_stats"],
                                   rngs={"dropout": rng}, **kw)
        return out, updates.get("batch_stats", batch_stats)

    def project(params, batch_stats, feats, head, mask):
        if not proj_bn:
            return model.apply({"params": params}, feats, head, method="project"), batch_stats
        z, updates = model.apply({"params": params, "batch_stats": batch_stats}, feats, head,
                                 True, mask, method="project", mutable=["batch_stats"])
        return z, updates["batch_stats"]

    def patchmix_cl(params, batch_stats, batch, rng1, rng2):
        mask, label, x = batch["mask"], batch["label"], batch["view1"]
        (head, weight), = weights.items()
        feats, batch_stats = encode(params, batch_stats, x, mask, rng1)
        ce = cross_entropy(model.apply({"params": params}, feats, method="classify"), label,
                           mask, cw)
        plan_rng, drop_rng = jax.random.split(rng2)
        plan = patchmix.patch_mix_plan(plan_rng, mask.shape[0], model.encoder.grid,
                                       config.loss.mix_beta, valid=mask)
        mixed, batch_stats = encode(params, batch_stats, x, mask, drop_rng, patch_mix=plan)
        z, batch_stats = project(params, batch_stats, mixed, head, mask)
        if z.shape[-1] != feats.shape[-1]:
            raise ValueError(f"patchmix_cl: projections of width {z.shape[-1]} cannot be "
                             f"compared with features of width {feats.shape[-1]}")
        cl = patchmix.patch_mix_contrastive_loss(z, feats, plan.index, plan.lam,
                                                 temperature=config.loss.temperature,
                                                 valid=mask)
        return ce + weight * cl, (batch_stats, {"loss/ce": ce, f"loss/{head}": cl})

    def pafa_step(params, batch_stats, batch, rng):
        mask, label = batch["mask"], batch["label"]
        (head, weight), = weights.items()
        tokens = config.model.get("proj_pool", "mean") == "attention"
        out, batch_stats = encode(params, batch_stats, batch["view1"], mask, rng,
                                  **({"tokens": True} if tokens else {}))
        feats, proj_in = out if tokens else (out, out)
        ce = cross_entropy(model.apply({"params": params}, feats, method="classify"), label,
                           mask, cw)
        z, batch_stats = project(params, batch_stats, proj_in, head, mask)
        loss, parts = pafa.pafa_loss(z, batch[head], mask, config.loss.pafa_pcsl,
                                     config.loss.pafa_gpal)
        return ce + weight * loss, (batch_stats, {"loss/ce": ce, f"loss/{head}": loss,
                                                  **{f"loss/{k}": v for k, v in parts.items()}})

    def fn(params, batch_stats, batch, rng):
        mask, label = batch["mask"], batch["label"]
        if method == "pafa":
            return pafa_step(params, batch_stats, batch, rng)
        rng1, rng2 = jax.random.split(rng)
        if method in ("ce", "bts"):  # bts: the text of each row's metadata beside the audio
            feats, batch_stats = encode(params, batch_stats, batch["view1"], mask, rng1,
                                        **model_inputs(model, batch))
            logits = model.apply({"params": params}, feats, method="classify")
            ce = cross_entropy(logits, label, mask, cw)
            return ce, (batch_stats, {"loss/ce": ce})
        if method == "patchmix_cl":
            return patchmix_cl(params, batch_stats, batch, rng1, rng2)
        if config.model.bn_per_view:
            f1, batch_stats = encode(params, batch_stats, batch["view1"], mask, rng1)
            f2, batch_stats = encode(params, batch_stats, batch["view2"], mask, rng2)
            feats = jnp.concatenate([f1, f2])
        else:
            feats, batch_stats = encode(params, batch_stats, jnp.concatenate(
                [batch["view1"], batch["view2"]]), jnp.concatenate([mask, mask]), rng1)
        proj = {}
        for h in weights:
            proj[h], batch_stats = project(params, batch_stats, feats, h,
                                           jnp.concatenate([mask, mask]))
        instance = jnp.arange(mask.shape[0], dtype=jnp.int32)
        labels = {h: instance if h == INSTANCE else batch[h] for h in weights}
        contrastive, per_head = multi_head(proj, labels, mask, weights,
                                           config.loss.temperature, config.loss.denominator)
        terms = {f"loss/{h}": v for h, v in per_head.items()}
        if method != "hybrid":
            return contrastive, (batch_stats, terms)
        logits = model.apply({"params": params}, feats, method="classify")
        ce = cross_entropy(logits, jnp.tile(label, 2), jnp.tile(mask, 2), cw)
        alpha = config.loss.alpha
        return alpha * ce + (1 - alpha) * contrastive, (batch_stats, {"loss/ce": ce, **terms})

    return fn
