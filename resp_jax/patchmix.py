"""Patch-Mix contrastive learning: the mixing plan and the losses (docs/method.md §9).

Why: Patch-Mix CL (Bae et al., "Patch-Mix Contrastive Learning with Audio Spectrogram
Transformer on Respiratory Sound Classification", Interspeech 2023) is the AST recipe we
reproduce. Its code (raymin0223/patch-mix_contrastive_learning: models/ast.py ``patch_mix``,
method/patchmix_cl.py, method/patchmix.py, main.py ``train``) defines what is computed here.

Mixing (one plan per batch, drawn afresh each step; :func:`patch_mix_plan`):

- ``lam ~ Beta(alpha, alpha)`` (alpha = ``mix_beta`` = 1: uniform); ``alpha <= 0`` means no
  mixing (lam = 1);
- a random permutation ``index`` of the batch: row ``i`` takes patches from row ``index[i]``
  (``index[i] == i`` can happen; the row is then unchanged);
- ``num_mixed = int(num_patches * (1 - lam))`` patch positions chosen uniformly without
  replacement, the same positions for every row; those patch embeddings of row ``i`` are
  replaced by row ``index[i]``'s. Class and distillation tokens are untouched;
- ``lam`` is then recomputed as the fraction actually kept: ``1 - num_mixed / num_patches``;
- where: on the patch embeddings, right after the patch convolution and before the position
  embedding is added (``ASTEncoder(..., patch_mix=plan)``); a replaced patch keeps its position,
  so the tokens equal mixing after the position embedding;
- the authors' ``time_domain`` variant (not in the published recipe) mixes whole time columns
  of the (frequency, time) grid instead: ``num_mixed = int(t_dim * (1 - lam))`` columns and
  ``lam = 1 - num_mixed / t_dim``.

Padded rows (``valid`` 0) are kept out: the permutation only pairs real rows with each other
(padded rows map to themselves), and the losses ignore padded rows as anchors and as contrasts.

Contrastive loss (:func:`patch_mix_contrastive_loss`, the authors' PatchMixConLoss with their
defaults ``negative_pair='all'``, ``target_type='grad_block'``): anchors are the projections of
the mixed batch, ``a_i = projector(encoder(mixed x)_i)``; targets are the clean batch's *encoder
features*, not projected, with the gradient stopped, ``c_j = stop_gradient(encoder(x)_j)`` (so
the projector's output size must equal the encoder width: 768). Both are L2-normalised;
``s_ij = a_i . c_j / temperature``; row i's positives are weighted ``lam`` on ``j = i`` and
``1 - lam`` on ``j = index[i]`` (sum 1); every column is in the denominator:

    loss = mean_i [ -sum_j w_ij (s_ij - logsumexp_j s_ij) ]

How the recipe combines it (main.py, method 'patchmix_cl'): per step two forward passes of
the same batch, clean and mixed. ``loss = CE(classifier(clean features), labels) + alpha *
contrastive`` with alpha 1.0, temperature 0.06. The classifier is AST's head shape, LayerNorm +
Linear(768, classes) freshly initialised; the projector is Linear(768, 768) -> BatchNorm1d ->
ReLU -> Linear(768, 768). After each optimiser step all weights (and BatchNorm statistics) are
averaged with the previous step's: ``w = 0.5 * w_before + 0.5 * w_after``
(:func:`moving_average`, ``--ma_update --ma_beta 0.5``).

The authors' plain Patch-Mix baseline (method 'patchmix') classifies the mixed features with
the mixup loss ``lam * CE(y) + (1 - lam) * CE(y[index])`` (:func:`patch_mix_cross_entropy`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class PatchMixPlan(NamedTuple):
    """One batch's mixing (a pytree, so it can cross ``jit``).

    ``index [B] int32``: row i takes patches from row ``index[i]``. ``patches [P] bool``: the
    replaced patch positions (frequency-major, as the encoder flattens its grid). ``lam []
    float32``: the fraction of its own patches each row keeps (recomputed from the count).
    """

    index: jax.Array
    patches: jax.Array
    lam: jax.Array


def sample_lam(rng: jax.Array, alpha: float) -> jax.Array:
    """``lam ~ Beta(alpha, alpha)`` as float32; 1 (no mixing) when ``alpha <= 0``."""
    if alpha <= 0:
        return jnp.ones((), jnp.float32)
    return jax.random.beta(rng, alpha, alpha).astype(jnp.float32)


def valid_permutation(rng: jax.Array, batch: int, valid: jax.Array | None = None) -> jax.Array:
    """A uniformly random permutation [batch] int32 of the rows with ``valid`` 1, padded rows
    mapping to themselves (all rows when ``valid`` is None)."""
    if valid is None:
        return jax.random.permutation(rng, batch).astype(jnp.int32)
    valid = jnp.asarray(valid) > 0
    rows = jnp.arange(batch)
    # Real rows first (in row order), then padded rows (in row order): the positions to fill...
    slots = jnp.argsort(jnp.where(valid, rows, batch + rows))
    # ...and the sources: real rows in random order, then padded rows in row order.
    keys = jnp.where(valid, jax.random.uniform(rng, (batch,)), 2.0 + rows)
    sources = jnp.argsort(keys)
    return jnp.zeros(batch, jnp.int32).at[slots].set(sources.astype(jnp.int32))


def mixed_patches(rng: jax.Array, lam: jax.Array, grid: tuple[int, int],
                  time_domain: bool = False) -> tuple[jax.Array, jax.Array]:
    """(patches [f_dim * t_dim] bool, recomputed lam) for a drawn ``lam``: ``int(n * (1 - lam))``
    of the n patches (or, with ``time_domain``, of the n = t_dim time columns) chosen uniformly
    without replacement."""
    f_dim, t_dim = grid
    n = t_dim if time_domain else f_dim * t_dim
    lam = jnp.asarray(lam, jnp.float32)
    count = jnp.clip(jnp.floor(n * (1.0 - lam)), 0, n).astype(jnp.int32)
    rank = jnp.argsort(jax.random.permutation(rng, n))  # rank[p] = place of p in the shuffle
    chosen = rank < count
    if time_domain:
        chosen = jnp.broadcast_to(chosen[None, :], (f_dim, t_dim)).reshape(-1)
    return chosen, 1.0 - count.astype(jnp.float32) / n


def patch_mix_plan(rng: jax.Array, batch: int, grid: tuple[int, int], alpha: float = 1.0, *,
                   valid: jax.Array | None = None, time_domain: bool = False) -> PatchMixPlan:
    """Draws one batch's :class:`PatchMixPlan` for an encoder whose patch grid is ``grid``
    (``ASTEncoder.grid``, e.g. (12, 79) for 798 frames). Works under ``jit`` (``batch``,
    ``grid``, ``alpha`` and ``time_domain`` static)."""
    lam_rng, perm_rng, patch_rng = jax.random.split(rng, 3)
    index = valid_permutation(perm_rng, batch, valid)
    patches, lam = mixed_patches(patch_rng, sample_lam(lam_rng, alpha), grid, time_domain)
    return PatchMixPlan(index=index, patches=patches, lam=lam)


def _l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def patch_mix_contrastive_loss(mixed_proj: jax.Array, target: jax.Array, index: jax.Array,
                               lam: jax.Array, *, temperature: float = 0.06,
                               valid: jax.Array | None = None, labels: jax.Array | None = None,
                               negatives: str = "all", stop_gradient: bool = True) -> jax.Array:
    """The Patch-Mix contrastive loss (a float32 scalar); see the module docstring.

    ``mixed_proj [B, D]``: projections of the mixed batch (anchors). ``target [B, D]``: the
    clean batch's representation (the authors' default: the encoder features, gradient
    stopped here when ``stop_gradient``). ``index`` and ``lam`` from the plan. ``valid [B]``:
    rows with 0 are neither anchors nor contrasts (``index`` must map real rows to real rows,
    as :func:`patch_mix_plan` does). ``negatives='diff_label'`` (the authors' option, not the
    recipe) keeps only the positives and the other-label columns in the denominator; it needs
    ``labels``.
    """
    if negatives not in ("all", "diff_label"):
        raise ValueError(f"negatives must be 'all' or 'diff_label', got {negatives!r}")
    if negatives == "diff_label" and labels is None:
        raise ValueError("negatives='diff_label' needs labels")
    a = _l2_normalise(jnp.asarray(mixed_proj, jnp.float32))
    c = jnp.asarray(target, jnp.float32)
    if stop_gradient:
        c = jax.lax.stop_gradient(c)
    c = _l2_normalise(c)
    batch = a.shape[0]
    lam = jnp.asarray(lam, jnp.float32)
    logits = (a @ c.T) / temperature
    own = jnp.eye(batch, dtype=jnp.float32)
    partner = jax.nn.one_hot(index, batch, dtype=jnp.float32)
    weights = lam * own + (1.0 - lam) * partner
    allowed = jnp.ones((batch, batch), bool)
    if negatives == "diff_label":
        labels = jnp.asarray(labels)
        allowed = (labels[:, None] != labels[None, :]) | (own > 0) | (partner > 0)
    row_valid = jnp.ones(batch, bool) if valid is None else jnp.asarray(valid) > 0
    allowed = allowed & row_valid[None, :]
    log_norm = jax.nn.logsumexp(jnp.where(allowed, logits, -jnp.inf), axis=1)
    per_row = -jnp.sum(weights * (logits - log_norm[:, None]), axis=1) / jnp.sum(weights, axis=1)
    per_row = jnp.where(row_valid, per_row, 0.0)
    return jnp.sum(per_row) / jnp.maximum(jnp.sum(row_valid), 1)


def patch_mix_cross_entropy(logits: jax.Array, labels: jax.Array, index: jax.Array,
                            lam: jax.Array, *, valid: jax.Array | None = None) -> jax.Array:
    """The Patch-Mix baseline's loss on the mixed batch's logits:
    ``lam * CE(labels) + (1 - lam) * CE(labels[index])``, CE averaged over real rows."""
    log_p = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    labels = jnp.asarray(labels)
    ce_a = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
    ce_b = -jnp.take_along_axis(log_p, labels[index][:, None], axis=1)[:, 0]
    row_valid = (jnp.ones(labels.shape, jnp.float32) if valid is None
                 else (jnp.asarray(valid) > 0).astype(jnp.float32))
    count = jnp.maximum(jnp.sum(row_valid), 1.0)
    lam = jnp.asarray(lam, jnp.float32)
    return (lam * jnp.sum(ce_a * row_valid) + (1.0 - lam) * jnp.sum(ce_b * row_valid)) / count


def moving_average(previous: Any, current: Any, beta: float = 0.5) -> Any:
    """``beta * previous + (1 - beta) * current`` leaf by leaf: the recipe's per-step weight
    averaging (previous = the weights before the optimiser step). With Adam and beta 0.5 this
    halves every parameter update (an lr of 2.5e-5 in place of 5e-5) and, applied to
    BatchNorm running statistics, halves their momentum (0.1 -> 0.05)."""
    return jax.tree.map(lambda p, c: beta * p + (1.0 - beta) * c, previous, current)
