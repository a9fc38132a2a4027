"""Optimiser and learning-rate schedules of the reference code (docs/method.md §5).

PyTorch's Adam with ``weight_decay`` adds wd * param to the gradient before the moment
estimates (L2 regularisation, not AdamW's decoupled decay): here `add_decayed_weights` runs
before `scale_by_adam`. eps 1e-8 is added to sqrt(v_hat), as PyTorch does.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

# train.schedule: the code's periodic cosine | the paper's one decay | a constant rate |
# OPERA's per-epoch decay (lr x train.lr_decay^epoch)
SCHEDULES = ("periodic_cosine", "cosine", "cosine_from_1", "constant", "exponential")


def epoch_lr(config, epoch):
    """Learning rate during (0-based) ``epoch``; works on ints and traced arrays.

    'periodic_cosine' is PyTorch's CosineAnnealingLR(T_max, eta_min) stepped once per epoch
    and never reset: its recursive update equals the closed form below for every epoch, also
    past T_max, so the rate falls for T_max epochs, rises for T_max, and so on (period
    2 T_max). 'cosine' is one decay with T_max = train.epochs. 'cosine_from_1' is that decay
    evaluated at the 1-based epoch number, as Patch-Mix's adjust_learning_rate sets it before
    each epoch (util/misc.py): the first epoch already below train.lr, the last at eta_min.
    'constant' is train.lr. 'exponential' is train.lr x train.lr_decay^epoch (OPERA's
    DecayLearningRate callback: the rate multiplied by 0.99 after every epoch).
    """
    base, low = config.train.lr, config.train.eta_min
    if config.train.schedule == "constant":
        return base + 0 * epoch
    if config.train.schedule == "exponential":
        decay = float(config.train.get("lr_decay", 1.0))
        return base * jnp.power(decay, jnp.asarray(epoch, jnp.float32))
    t_max = config.train.cosine_t_max if config.train.schedule == "periodic_cosine" \
        else config.train.epochs
    shift = 1 if config.train.schedule == "cosine_from_1" else 0
    cos = jnp.cos(math.pi * (jnp.asarray(epoch, jnp.float32) + shift) / t_max)
    return low + (base - low) * (1 + cos) / 2


def warmup_target(config):
    """The rate a warm-up of ``train.warmup_epochs`` = W epochs rises to: the schedule's
    cosine at epoch number W (Patch-Mix's main.py: warmup_to = eta_min + (lr - eta_min)
    (1 + cos(pi W / epochs)) / 2 with --cosine; the base rate otherwise). The periodic cosine
    uses its own T_max."""
    base, low = config.train.lr, config.train.eta_min
    warm = int(config.train.get("warmup_epochs", 0))
    if config.train.schedule in ("constant", "exponential"):
        return float(epoch_lr(config, warm))
    t_max = config.train.cosine_t_max if config.train.schedule == "periodic_cosine" \
        else config.train.epochs
    return low + (base - low) * (1 + math.cos(math.pi * warm / t_max)) / 2


def schedule(config, steps_per_epoch: int) -> Callable:
    """Per-step schedule: the rate of the epoch the step belongs to (optax counts from 0).

    With ``train.warmup_epochs`` = W > 0 the first W epochs instead rise linearly per step from
    0.1 x train.lr to `warmup_target`, as Patch-Mix's ``warmup_learning_rate`` (util/misc.py,
    --warm): step s (0-based, over all epochs) of the warm-up gets
    from + s / (W x steps_per_epoch) x (to - from); later epochs keep `epoch_lr`.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    warm = int(config.train.get("warmup_epochs", 0))
    if warm <= 0:
        return lambda step: epoch_lr(config, step // steps_per_epoch)
    start, end = 0.1 * config.train.lr, warmup_target(config)
    warm_steps = warm * steps_per_epoch

    def rate(step):
        ramp = start + (jnp.asarray(step, jnp.float32) / warm_steps) * (end - start)
        return jnp.where(step < warm_steps, ramp, epoch_lr(config, step // steps_per_epoch))
    return rate


def l2_and_clip(weight_decay: float, head_weight_decay: float | None = None,
                clip_norm: float = 0.0) -> list:
    """The transformations before Adam (a list, so that `adam_l2`'s chain keeps the flat
    state layout of saved runs): the L2 term wd x param
    (``head_weight_decay``: another one for every parameter outside ``encoder``, the
    classifier and projectors), then, with ``clip_norm`` > 0, the global norm clipped (OPERA's
    fine-tuning: an explicit L2 term in the loss, then Lightning's gradient_clip_val)."""
    if head_weight_decay is None or head_weight_decay == weight_decay:
        decay = [optax.add_decayed_weights(weight_decay)]
    else:
        def mask(encoder: bool):
            return lambda params: {k: jax.tree.map(lambda _: (k == "encoder") == encoder, v)
                                   for k, v in params.items()}
        decay = [optax.add_decayed_weights(weight_decay, mask=mask(True)),
                 optax.add_decayed_weights(head_weight_decay, mask=mask(False))]
    clip = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    return decay + clip


def adam_l2(learning_rate, weight_decay: float, b1: float = 0.9, b2: float = 0.999, *,
            head_weight_decay: float | None = None,
            clip_norm: float = 0.0) -> optax.GradientTransformation:
    """PyTorch ``Adam(lr, betas=(b1, b2), weight_decay=wd)``, with `l2_and_clip`'s options."""
    return optax.chain(*l2_and_clip(weight_decay, head_weight_decay, clip_norm),
                       optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8),
                       optax.scale_by_learning_rate(learning_rate))


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The training optimiser of ``config`` (resolved: train.lr set)."""
    return adam_l2(schedule(config, steps_per_epoch), config.train.weight_decay,
                   config.train.b1, config.train.b2,
                   head_weight_decay=config.train.get("head_weight_decay"),
                   clip_norm=float(config.train.get("clip_norm", 0.0)))
