"""The second stage of two-stage methods (scl, simclr, mscl): a linear classifier fitted on the
frozen encoder's features (inference mode, no SpecAugment), evaluated every epoch, with Adam at
``linear_eval.lr``, L2 ``linear_eval.weight_decay`` and no schedule (docs/method.md §5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from resp_jax import losses, optim, parallel, selection, steps
from resp_jax.models.heads import Classifier
from resp_jax.stopping import Interrupted, NonFiniteLoss


def linear_evaluation(config, model, state, data, mesh, log, stop) -> tuple:
    """Fits the classifier on features computed once; returns (selector, classifier params of
    the selected epoch)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    encode = jax.jit(lambda v, x: model.apply(v, x, False, method="encode"),
                     in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                     out_shardings=parallel.replicated(mesh))
    feats = {}
    for split in data.eval_splits + ("train",):
        outs = [(encode(variables, b["x"]), b["label"], b["mask"])
                for b in data.eval_batches(split, mesh)]
        x, y, m = (np.concatenate([parallel.to_host(o[i]) for o in outs]) for i in range(3))
        feats[split] = (x[m > 0], y[m > 0])
    cw = None if data.class_weights is None else jnp.asarray(data.class_weights, jnp.float32)
    clf = Classifier(data.num_classes)
    tx = optim.adam_l2(config.linear_eval.lr, config.linear_eval.weight_decay,
                       config.train.b1, config.train.b2)
    feats = parallel.replicate(feats, mesh)  # small: every device holds all of them
    x_train, y_train = feats["train"]

    @jax.jit
    def init(key):
        params = clf.init(jax.random.fold_in(key, 1), x_train[:1])["params"]
        return params, tx.init(params)

    @jax.jit
    def epoch_fn(params, opt_state, index, mask):
        def step(carry, inputs):
            params, opt_state = carry
            i, m = inputs
            loss_of = lambda p: losses.cross_entropy(clf.apply({"params": p}, x_train[i]),
                                                      y_train[i], m, cw)
            loss, grads = jax.value_and_grad(loss_of)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss * m.sum(), m.sum())
        (params, opt_state), (sums, counts) = jax.lax.scan(step, (params, opt_state),
                                                           (index, mask))
        return params, opt_state, sums.sum() / counts.sum()

    predict = jax.jit(lambda p, x, y: steps.predictions(clf.apply({"params": p}, x), y,
                                                        jnp.ones(y.shape, jnp.float32), cw))
    params, opt_state = init(state.key)
    n, batch = len(y_train), config.linear_eval.batch_size
    num_steps = -(-n // batch)
    selector, best = selection.Selector(config.eval.selection), None
    for epoch in range(1, config.linear_eval.epochs + 1):
        if stop.signum:
            raise Interrupted(stop.signum, "interrupted during linear evaluation; the "
                              "pretrained encoder is saved and linear evaluation reruns on "
                              "resume")
        order = np.random.default_rng((config.train.seed, 1, epoch)).permutation(n)
        index = np.zeros(num_steps * batch, np.int32)
        index[:n] = order
        mask = (np.arange(num_steps * batch) < n).astype(np.float32)
        index, mask = parallel.replicate((index.reshape(num_steps, batch),
                                          mask.reshape(num_steps, batch)), mesh)
        params, opt_state, loss = epoch_fn(params, opt_state, index, mask)
        loss = float(loss)
        if not np.isfinite(loss):
            raise NonFiniteLoss(f"linear evaluation loss became {loss} at epoch {epoch}; "
                                "lower linear_eval.lr")
        log.write({"epoch": epoch, "stage": "linear", "split": "train", "loss": loss})
        results = {}
        for split in data.eval_splits:
            results[split] = steps.scores([predict(params, *feats[split])], data.name)
            log.write({"epoch": epoch, "stage": "linear", "split": split, **results[split]})
        if selector.update(epoch, results):
            best = params
    logging.info("linear evaluation: %d epochs, selected epoch %d (%s): test score %.2f",
                 config.linear_eval.epochs, selector.best["epoch"], selector.protocol,
                 selector.best["test"]["score"])
    return selector, best
