"""The jitted steps: one optimiser step on a global training batch, one evaluation batch.

Each step is a pure function of its inputs, written for the global batch and jitted once over
the mesh (batch sharded, state replicated and donated); XLA inserts the collectives. The
pure functions are exposed (`train_step_fn`, `eval_step_fn`) so that tests can count traces.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resp_jax import losses, metrics, parallel, patchmix
from resp_jax.models.heads import inputs as model_inputs


def train_step_fn(model, tx, config, class_weights, learning_rate: Callable) -> Callable:
    """Pure ``step(state, batch) -> (state, metrics)``.

    ``metrics`` hold the batch's ``loss``, every term of `losses.batch_loss` (``loss/<head>``,
    ``loss/ce``), the learning rate the update used (``lr``), the global norm of the gradient
    (``grad_norm``) and the number of real examples (``count``).

    With ``train.weight_average`` = b > 0 every parameter and BatchNorm statistic becomes
    b x (before the step) + (1 - b) x (after) once the optimiser has stepped; the optimiser
    state is not averaged (Patch-Mix's ``--ma_update``, `patchmix.moving_average`).
    """
    compute = losses.batch_loss(model, config, losses.heads(config), class_weights)
    beta = float(config.train.get("weight_average", 0.0))

    def train_step(state, batch):
        rng = jax.random.fold_in(state.key, state.step)
        grad_fn = jax.value_and_grad(compute, has_aux=True)
        (loss, (batch_stats, terms)), grads = grad_fn(state.params, state.batch_stats, batch,
                                                      rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if beta > 0:
            params = patchmix.moving_average(state.params, params, beta)
            batch_stats = patchmix.moving_average(state.batch_stats, batch_stats, beta)
        new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                            step=state.step + 1)
        return new, {"loss": loss, **terms, "lr": jnp.asarray(learning_rate(state.step),
                                                              jnp.float32),
                     "grad_norm": optax.tree.norm(grads), "count": jnp.sum(batch["mask"])}

    return train_step


def make_train_step(model, tx, config, class_weights, mesh, learning_rate: Callable) -> Callable:
    """`train_step_fn` jitted over ``mesh``; the state is donated."""
    repl, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(train_step_fn(model, tx, config, class_weights, learning_rate),
                   in_shardings=(repl, shard), out_shardings=(repl, repl), donate_argnums=0)


def predictions(logits, label, mask, class_weights) -> dict:
    """Predicted classes, class probabilities and the class-weighted CE sums of a batch of
    logits."""
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    ce = losses.cross_entropy(logits, label, mask, cw)
    w = jnp.where((mask > 0) & (label >= 0),
                  1.0 if cw is None else cw[jnp.maximum(label, 0)], 0)
    return {"pred": jnp.argmax(logits, -1), "label": label, "mask": mask,
            "prob": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
            "loss_sum": ce * jnp.sum(w), "weight": jnp.sum(w)}


def eval_step_fn(model, class_weights) -> Callable:
    """Pure ``step(variables, batch) -> predictions`` in inference mode (BatchNorm running
    statistics, no dropout, no augmentation)."""
    def eval_step(variables, batch):
        logits = model.apply(variables, batch["x"], False,
                             **model_inputs(model, batch))["logits"]
        return predictions(logits, batch["label"], batch["mask"], class_weights)

    return eval_step


def make_eval_step(model, class_weights, mesh) -> Callable:
    repl = parallel.replicated(mesh)
    return jax.jit(eval_step_fn(model, class_weights),
                   in_shardings=(repl, parallel.batch_sharding(mesh)), out_shardings=repl)


def gather(outputs: list) -> dict:
    """The per-batch outputs of an eval step on the host (one read), padding rows removed:
    ``label``, ``pred`` [n], ``prob`` [n, C] in evaluation order, and the split's ``loss``."""
    out = jax.tree.map(lambda *xs: np.concatenate([np.atleast_1d(parallel.to_host(x))
                                                   for x in xs]), *outputs)
    keep = out["mask"] > 0
    return {"label": out["label"][keep], "pred": out["pred"][keep], "prob": out["prob"][keep],
            "loss": float(out["loss_sum"].sum() / max(out["weight"].sum(), 1e-12))}


def scores(gathered: dict, dataset: str, num_classes: int | None = None) -> dict:
    """Metrics of a split from its `gather`ed outputs (the figures its predictions file
    gives again, `evaluation.Predictions.scores`)."""
    s = metrics.summarize(gathered["label"], gathered["pred"], dataset=dataset,
                          num_classes=num_classes)
    result = {"loss": gathered["loss"]}
    result.update({k: s[k] for k in metrics.REPORTED if k in s})
    return result
