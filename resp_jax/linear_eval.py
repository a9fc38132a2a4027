"""The second stage of two-stage methods (scl, simclr, mscl): a linear classifier on the frozen
encoder's features (inference mode, no SpecAugment), evaluated every epoch, with Adam at
``linear_eval.lr``, L2 ``linear_eval.weight_decay`` and no schedule (docs/method.md §5); or,
as OPERA's linear probe, the rate x ``linear_eval.lr_decay`` after every epoch and the
gradient clipped to ``linear_eval.clip_norm``. Method 'linear_probe' skips the first stage:
the classifier sits on the converted encoder as it is (OPERA's benchmark).

``linear_eval.features`` (docs/fidelity.md):
  'per_epoch'  the reference: every epoch iterates the shuffled training split in batches of
               ``linear_eval.batch_size``, each batch min-maxed on its own and encoded by the
               frozen encoder (one jitted, batch-sharded call that also takes the classifier's
               Adam step), so the features see a new batch grouping every epoch;
  'cached'     features computed once from the evaluation batches (file order), then shuffled
               per epoch on the device: faster, but each batch's min-max differs.
Evaluation splits are encoded once: their batches and the frozen encoder do not change.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from resp_jax import losses, optim, parallel, selection, steps
from resp_jax.models.heads import Classifier
from resp_jax.stopping import Interrupted, NonFiniteLoss

FEATURES = ("per_epoch", "cached")


def _encode_split(encode, variables, data, split, mesh):
    outs = [(encode(variables, b["x"]), b["label"], b["mask"])
            for b in data.eval_batches(split, mesh)]
    x, y, m = (np.concatenate([parallel.to_host(o[i]) for o in outs]) for i in range(3))
    return x[m > 0], y[m > 0]


def linear_evaluation(config, model, state, data, mesh, log, stop) -> tuple:
    """Fits and selects the classifier; returns (selector, classifier params of the selected
    epoch, that epoch's gathered test outputs: `steps.gather`)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    repl, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    encode = jax.jit(lambda v, x: model.apply(v, x, False, method="encode"),
                     in_shardings=(repl, shard), out_shardings=repl)
    per_epoch = config.linear_eval.features == "per_epoch"
    splits = data.eval_splits if per_epoch else data.eval_splits + ("train",)
    feats = parallel.replicate({s: _encode_split(encode, variables, data, s, mesh)
                                for s in splits}, mesh)  # small: every device holds them
    cw = None if data.class_weights is None else jnp.asarray(data.class_weights, jnp.float32)
    clf = Classifier(data.num_classes, norm=bool(config.model.classifier_norm))
    decay = float(config.linear_eval.get("lr_decay", 1.0))
    rate = config.linear_eval.lr
    if decay != 1.0:  # per epoch, as OPERA's DecayLearningRate (0.97 in its linear probe)
        steps_per_epoch = -(-len(feats["train"][1]) // config.linear_eval.batch_size) \
            if not per_epoch else data.num_batches("train", config.linear_eval.batch_size)
        rate = lambda step: config.linear_eval.lr * decay ** (step // steps_per_epoch)  # noqa
    tx = optim.adam_l2(rate, config.linear_eval.weight_decay, config.train.b1, config.train.b2,
                       clip_norm=float(config.linear_eval.get("clip_norm", 0.0)))
    width = jax.eval_shape(lambda v, x: model.apply(v, x, False, method="encode"), variables,
                           jax.ShapeDtypeStruct((1,) + tuple(data.input_shape),
                                                jnp.float32)).shape[-1]

    def update(params, opt_state, x, y, m):
        loss, grads = jax.value_and_grad(
            lambda p: losses.cross_entropy(clf.apply({"params": p}, x), y, m, cw))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss * m.sum(), m.sum()

    @jax.jit
    def init(key):
        params = clf.init(jax.random.fold_in(key, 1), jnp.zeros((1, width)))["params"]
        return params, tx.init(params)

    @jax.jit
    def cached_epoch(params, opt_state, train, index, mask):
        x_train, y_train = train

        def step(carry, inputs):
            i, m = inputs
            params, opt_state, total, count = update(*carry[:2], x_train[i], y_train[i], m)
            return (params, opt_state), (total, count)
        (params, opt_state), (sums, counts) = jax.lax.scan(step, (params, opt_state),
                                                           (index, mask))
        return params, opt_state, sums.sum(), counts.sum()

    @jax.jit
    def fresh_step(params, opt_state, acc, variables, batch):
        x = jax.lax.stop_gradient(model.apply(variables, batch["x"], False, method="encode"))
        params, opt_state, total, count = update(params, opt_state, x, batch["label"],
                                                 batch["mask"])
        return params, opt_state, (acc[0] + total, acc[1] + count)

    def train_epoch(params, opt_state, epoch):
        if per_epoch:
            acc = (jnp.zeros(()), jnp.zeros(()))
            for batch in data.linear_batches(epoch, mesh):
                params, opt_state, acc = fresh_step(params, opt_state, acc, variables, batch)
            return (params, opt_state) + acc
        n, batch = len(feats["train"][1]), config.linear_eval.batch_size
        num_steps = -(-n // batch)
        order = np.random.default_rng((config.train.seed, 1, epoch)).permutation(n)
        index = np.zeros(num_steps * batch, np.int32)
        index[:n] = order
        mask = (np.arange(num_steps * batch) < n).astype(np.float32)
        index, mask = parallel.replicate((index.reshape(num_steps, batch),
                                          mask.reshape(num_steps, batch)), mesh)
        return cached_epoch(params, opt_state, feats["train"], index, mask)

    predict = jax.jit(lambda p, x, y: steps.predictions(clf.apply({"params": p}, x), y,
                                                        jnp.ones(y.shape, jnp.float32), cw))
    params, opt_state = init(state.key)
    selector, best, best_test = selection.Selector(config.eval.selection), None, None
    for epoch in range(1, config.linear_eval.epochs + 1):
        if stop.signum:
            raise Interrupted(stop.signum, "interrupted during linear evaluation; the "
                              "pretrained encoder is saved and linear evaluation reruns on "
                              "resume")
        t0 = time.perf_counter()
        params, opt_state, total, count = train_epoch(params, opt_state, epoch)
        loss = float(total) / max(float(count), 1.0)  # one host read per epoch
        log.scalar("linear/speed/samples_per_s", float(count) / (time.perf_counter() - t0),
                   epoch)  # TensorBoard only
        if not np.isfinite(loss):
            raise NonFiniteLoss(f"linear evaluation loss became {loss} at epoch {epoch}; "
                                "lower linear_eval.lr")
        log.write({"epoch": epoch, "stage": "linear", "split": "train", "loss": loss})
        results, outputs = {}, {}
        for split in data.eval_splits:
            outputs[split] = steps.gather([predict(params, *feats[split])])
            results[split] = steps.scores(outputs[split], data.name, data.num_classes)
            log.write({"epoch": epoch, "stage": "linear", "split": split, **results[split]})
        if selector.update(epoch, results):
            best, best_test = params, outputs["test"]
    logging.info("linear evaluation (%s features): %d epochs, selected epoch %d (%s): test "
                 "score %.2f", config.linear_eval.features, config.linear_eval.epochs,
                 selector.best["epoch"], selector.protocol, selector.best["test"]["score"])
    return selector, best, best_test
