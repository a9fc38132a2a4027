"""Training and evaluation of every method of the paper (SPEC 4, 5) through one loop.

CE, SupCon, SimCLR, hybrid and M-SCL are one `train_step` with different loss terms. Two-stage
methods (scl, simclr, mscl) pretrain, then fit a linear classifier on frozen features
(`linear_evaluation`); one-stage methods (ce, hybrid) train the classifier with the encoder and
are evaluated every epoch. `train_and_evaluate` reads top to bottom: mesh, data, model, state,
restore, loop, evaluate, select, save.

Steps are jitted once for the global batch (sharded over the mesh, state replicated and
donated); the loop reads the loss back only every `train.log_every` steps and before saving.
"""

from __future__ import annotations

import collections
import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from resp_jax import checkpoint, configuration, logging_utils, losses, metrics, optim

from resp_jax.data import run_data
from resp_jax import parallel, selection
from resp_jax.models import cnn6, get_model
from resp_jax.stopping import Interrupted, NonFiniteLoss, StopFlag, nonfinite

# How often each step function's Python body ran (= was traced). Compile-once test hook.
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array  # optimiser steps taken (int32)
    rng: jax.Array   # PRNG key (uint32[2]); seeds the linear classifier of the second stage


# ------------------------------------------------------------------------------------------
# Model and state


def build_model(config, num_classes: int):
    return get_model(config.model.name, channels=tuple(config.model.channels),
                     layout=config.model.layout, num_classes=num_classes,
                     heads=tuple(f for f, _ in configuration.heads(config)),
                     proj_hidden=config.model.proj_hidden, proj_out=config.model.proj_out,
                     dtype=jnp.dtype(config.model.dtype))


def _pretrained(config) -> dict | None:
    """The converted encoder of ``model.init_from`` (checked against model.channels)."""
    if not config.model.init_from:
        return None
    encoder, variables = cnn6.load_pretrained(config.model.init_from)
    if tuple(encoder.channels) != tuple(config.model.channels):
        raise ValueError(f"{config.model.init_from} holds a CNN6 encoder with channels "
                         f"{tuple(encoder.channels)}, but config.model.channels is "
                         f"{tuple(config.model.channels)}")
    logging.info("Encoder initialised from %s", config.model.init_from)
    return variables


def create_train_state(config, model, tx, frames: int, mesh, *, pretrained: Any = "load",
                       abstract: bool = False) -> TrainState:
    """A new replicated TrainState (or, with ``abstract``, its shapes/shardings: the restore
    target, computed with jax.eval_shape and no weights read or initialised)."""
    rng = jax.random.PRNGKey(config.train.seed)
    init_key, state_key = jax.random.split(rng)

    def init(encoder_vars):
        x = jnp.zeros((2, 64, frames), jnp.float32)
        variables = model.init(init_key, x, train=False)
        params, batch_stats = dict(variables["params"]), dict(variables["batch_stats"])
        if configuration.is_two_stage(config):  # the classifier is fitted in the second stage
            params.pop("classifier")
        if encoder_vars is not None:
            params["encoder"] = encoder_vars["params"]
            batch_stats["encoder"] = encoder_vars["batch_stats"]
        return TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=state_key)

    shapes = jax.eval_shape(init, None)
    sharding = jax.tree.map(lambda _: parallel.replicated(mesh), shapes)
    if abstract:
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, sharding)
    encoder_vars = _pretrained(config) if pretrained == "load" else pretrained
    if encoder_vars is not None:
        want = jax.tree.map(lambda s: s.shape, {"params": shapes.params["encoder"],
                                                "batch_stats": shapes.batch_stats["encoder"]})
        got = jax.tree.map(jnp.shape, dict(encoder_vars))
        if want != got:
            raise ValueError(f"pretrained encoder shapes {got} do not fit the model {want}")
    return jax.jit(init, out_shardings=sharding)(encoder_vars)


# ------------------------------------------------------------------------------------------
# Steps


def loss_fn(model, config, class_weights) -> Callable:
    """``f(params, batch_stats, batch) -> (loss, (new batch_stats, {term: value}))``."""
    method = config.method
    heads = configuration.heads(config)
    weights = dict(heads)
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def encode(params, batch_stats, x, mask):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                   mask, method="encode", mutable=["batch_stats"])
        return out, updates["batch_stats"]

    def fn(params, batch_stats, batch):
        mask, label = batch["mask"], batch["label"]
        if method == "ce":
            feats, batch_stats = encode(params, batch_stats, batch["view1"], mask)
            logits = model.apply({"params": params}, feats, method="classify")
            ce = losses.cross_entropy(logits, label, mask, cw)
            return ce, (batch_stats, {"ce": ce})
        if config.model.bn_per_view:  # two encoder calls: BatchNorm statistics per view
            f1, batch_stats = encode(params, batch_stats, batch["view1"], mask)
            f2, batch_stats = encode(params, batch_stats, batch["view2"], mask)
            feats = jnp.concatenate([f1, f2])
        else:
            feats, batch_stats = encode(params, batch_stats, jnp.concatenate(
                [batch["view1"], batch["view2"]]), jnp.concatenate([mask, mask]))
        proj = {h: model.apply({"params": params}, feats, h, method="project") for h in weights}
        instance = jnp.arange(mask.shape[0], dtype=jnp.int32)
        labels = {h: instance if h == configuration.INSTANCE else batch[h] for h in weights}
        contrastive, per_head = losses.multi_head(proj, labels, mask, weights,
                                                  config.loss.temperature,
                                                  config.loss.denominator)
        terms = {f"supcon/{h}": v for h, v in per_head.items()}
        if method != "hybrid":
            return contrastive, (batch_stats, terms)
        logits = model.apply({"params": params}, feats, method="classify")
        ce = losses.cross_entropy(logits, jnp.tile(label, 2), jnp.tile(mask, 2), cw)
        alpha = config.loss.alpha
        return alpha * ce + (1 - alpha) * contrastive, (batch_stats, {"ce": ce, **terms})

    return fn


def make_train_step(model, tx, config, class_weights, mesh) -> Callable:
    """Jitted ``step(state, batch) -> (state, metrics)``; the state is donated."""
    compute = loss_fn(model, config, class_weights)

    def train_step(state: TrainState, batch):
        TRACE_COUNTS["train_step"] += 1
        grad_fn = jax.value_and_grad(compute, has_aux=True)
        (loss, (batch_stats, terms)), grads = grad_fn(state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)
        return state, {"loss": loss, **terms, "count": jnp.sum(batch["mask"])}

    repl, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(train_step, in_shardings=(repl, shard), out_shardings=(repl, repl),
                   donate_argnums=0)


def read_loss(acc) -> tuple[float, float]:
    """(loss sum, example count) of the epoch so far: the training loop's only host read,
    every ``train.log_every`` steps, at the end of an epoch and before an interrupted epoch's
    checkpoint; between reads steps are dispatched without waiting for the device."""
    total, count = jax.device_get((acc["loss"], acc["count"]))
    return float(total), float(count)


@jax.jit
def _accumulate(acc, m):
    """Running sums of count-weighted step metrics, kept on device."""
    n = m["count"]
    return {k: acc[k] + (n if k == "count" else m[k] * n) for k in acc}


def make_eval_step(model, class_weights, mesh) -> Callable:
    """Jitted ``step(variables, batch) -> predictions, labels, mask, weighted CE sums``
    (inference mode: BatchNorm running statistics, no augmentation)."""
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def eval_step(variables, batch):
        TRACE_COUNTS["eval_step"] += 1
        logits = model.apply(variables, batch["x"], False)["logits"]
        return _predictions(logits, batch["label"], batch["mask"], cw)

    repl = parallel.replicated(mesh)
    return jax.jit(eval_step, in_shardings=(repl, parallel.batch_sharding(mesh)),
                   out_shardings=repl)


def _predictions(logits, label, mask, cw):
    ce = losses.cross_entropy(logits, label, mask, cw)
    w = jnp.where((mask > 0) & (label >= 0), 1.0 if cw is None else cw[jnp.maximum(label, 0)], 0)
    return {"pred": jnp.argmax(logits, -1), "label": label, "mask": mask,
            "loss_sum": ce * jnp.sum(w), "weight": jnp.sum(w)}


def scores(outputs: list, dataset: str) -> dict:
    """Metrics of a split from the per-batch outputs of an eval step (one host read)."""
    out = jax.tree.map(lambda *xs: np.concatenate([np.atleast_1d(parallel.to_host(x))
                                                   for x in xs]), *outputs)
    keep = out["mask"] > 0
    s = metrics.summarize(out["label"][keep], out["pred"][keep], dataset=dataset)
    result = {"loss": float(out["loss_sum"].sum() / max(out["weight"].sum(), 1e-12))}
    result.update({k: s[k] for k in ("sp", "se", "score", "hs", "sprsound_score") if k in s})
    return result


# ------------------------------------------------------------------------------------------
# Second stage: linear classifier on frozen features


def linear_evaluation(config, model, state, data, mesh, log, stop) -> tuple:
    """Fits `cnn6.Classifier` on frozen encoder features (computed once) with Adam, lr
    linear_eval.lr, L2 linear_eval.weight_decay, no schedule; evaluates every epoch.
    Returns (selector, classifier params of the selected epoch)."""
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
    clf = cnn6.Classifier(data.num_classes)
    tx = optim.adam_l2(config.linear_eval.lr, config.linear_eval.weight_decay,
                       config.train.b1, config.train.b2)
    feats = parallel.replicate(feats, mesh)  # small: every device holds all of them
    x_train, y_train = feats["train"]

    @jax.jit
    def init(rng):
        params = clf.init(jax.random.fold_in(rng, 1), x_train[:1])["params"]
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

    predict = jax.jit(lambda p, x, y: _predictions(clf.apply({"params": p}, x), y,
                                                   jnp.ones(y.shape, jnp.float32), cw))
    params, opt_state = init(state.rng)
    n, batch = len(y_train), config.linear_eval.batch_size
    steps = -(-n // batch)
    selector, best = selection.Selector(config.eval.selection), None
    for epoch in range(1, config.linear_eval.epochs + 1):
        if stop.signum:
            raise Interrupted(stop.signum, "interrupted during linear evaluation; the "
                              "pretrained encoder is saved and linear evaluation reruns on "
                              "resume")
        order = np.random.default_rng((config.train.seed, 1, epoch)).permutation(n)
        index = np.zeros(steps * batch, np.int32)
        index[:n] = order
        mask = (np.arange(steps * batch) < n).astype(np.float32)
        index, mask = parallel.replicate((index.reshape(steps, batch),
                                          mask.reshape(steps, batch)), mesh)
        params, opt_state, loss = epoch_fn(params, opt_state, index, mask)
        loss = float(loss)
        if not np.isfinite(loss):
            raise NonFiniteLoss(f"linear evaluation loss became {loss} at epoch {epoch}; "
                                "lower linear_eval.lr")
        log.write({"epoch": epoch, "stage": "linear", "split": "train", "loss": loss})
        results = {}
        for split in data.eval_splits:
            results[split] = scores([predict(params, *feats[split])], data.name)
            log.write({"epoch": epoch, "stage": "linear", "split": split, **results[split]})
        if selector.update(epoch, results):
            best = params
    logging.info("linear evaluation: %d epochs, selected epoch %d (%s): test score %.2f",
                 config.linear_eval.epochs, selector.best["epoch"], selector.protocol,
                 selector.best["test"]["score"])
    return selector, best


# ------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config, workdir) -> dict:
    """Runs (or resumes) one experiment in ``workdir``; returns what results.json holds."""
    config = configuration.resolve(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    two_stage = configuration.is_two_stage(config)
    stage = "pretrain" if two_stage else "train"

    # --- mesh
    mesh = parallel.make_mesh()
    for name in ("train.batch_size", "eval.batch_size"):
        parallel.check_batch_size(config[name.split(".")[0]][name.split(".")[1]], mesh, name)
    logging.info("Mesh: %d device(s) over %d process(es): %s", mesh.devices.size,
                 jax.process_count(), jax.devices()[0].platform)

    # --- data
    data = run_data.load(config)
    batch, epochs = config.train.batch_size, config.train.epochs
    steps_per_epoch = data.num_batches("train", batch)

    # --- model
    model = build_model(config, data.num_classes)
    tx = optim.make_optimizer(config, steps_per_epoch)
    train_step = make_train_step(model, tx, config, data.class_weights, mesh)
    eval_step = make_eval_step(model, data.class_weights, mesh)

    # --- state, restore
    ckpts = checkpoint.Checkpoints(workdir)
    target = create_train_state(config, model, tx, data.frames, mesh, abstract=True)
    restored = ckpts.restore(checkpoint.LAST, target)
    configuration.check_resume(workdir, config, restored is not None)
    if restored is None:
        state = create_train_state(config, model, tx, data.frames, mesh)
        meta = {"epoch": 0, "batch": 0, "lines": 0, "acc": None,
                "selector": selection.Selector(config.eval.selection).state_dict()}
    else:
        state, meta = restored
        logging.info("Resuming from %s: epoch %d, batch %d", ckpts.path(), meta["epoch"] + 1,
                     meta["batch"])
    selector = selection.Selector.from_state_dict(meta["selector"])
    log = logging_utils.MetricsLog(workdir, keep_lines=meta["lines"])

    def save_last(epoch, k, acc):
        position = {"epoch": epoch, "batch": k, "lines": log.lines,
                    "selector": selector.state_dict(), "acc": acc}
        ckpts.save(checkpoint.LAST, epoch * steps_per_epoch + k, state, position)

    # --- loop
    with StopFlag() as stop, contextlib.closing(ckpts), contextlib.closing(log):
        for epoch in range(meta["epoch"], epochs):
            skip = meta["batch"] if epoch == meta["epoch"] else 0
            zero = {k: 0.0 for k in ("loss", "count")}
            acc = jax.tree.map(jnp.float32, meta["acc"] if skip and meta["acc"] else zero)
            progress = logging_utils.Progress(steps_per_epoch, f"{stage} {epoch + 1}/{epochs}",
                                              initial=skip)
            t0, k, logged, total, count = time.perf_counter(), skip, skip, 0.0, 0.0
            batches = logging_utils.InputTimer(data.train_batches(epoch, skip, mesh))
            for batch_ in batches:
                if stop.signum:
                    total, count = read_loss(acc)
                    if not np.isfinite(total):
                        raise nonfinite(total, f"in epoch {epoch + 1}", ckpts)
                    save_last(epoch, k, {"loss": total, "count": count})
                    raise Interrupted(stop.signum, f"interrupted in epoch {epoch + 1} at batch "
                                      f"{k}/{steps_per_epoch}; checkpoint saved in "
                                      f"{ckpts.path()}. Run the same command to resume.")
                state, m = train_step(state, batch_)
                acc = _accumulate(acc, {"loss": m["loss"], "count": m["count"]})
                k += 1
                if k % config.train.log_every == 0 or k == steps_per_epoch:
                    total, count = read_loss(acc)
                    if not np.isfinite(total):
                        raise nonfinite(total, f"in epoch {epoch + 1} by step {k}", ckpts)
                    progress.update(k - logged, (k - logged) * batch, total / max(count, 1))
                    logged = k
            progress.close()
            seconds = time.perf_counter() - t0  # the last read_loss waited for the device
            train_loss = total / max(count, 1.0)
            log.write({"epoch": epoch + 1, "stage": stage, "split": "train", "loss": train_loss})
            speed = {"samples_per_s": (k - skip) * batch / seconds,
                     "input_wait_fraction": batches.seconds / seconds}
            for key, value in speed.items():  # TensorBoard only: metrics.jsonl stays
                log.scalar(f"{stage}/speed/{key}", value, epoch + 1)  # reproducible
            line = f"{stage} epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}"
            if not two_stage:  # --- evaluate, select (one-stage: every epoch)
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                results = {}
                for split in data.eval_splits:
                    outs = [eval_step(variables, b) for b in data.eval_batches(split, mesh)]
                    results[split] = scores(outs, data.name)
                    log.write({"epoch": epoch + 1, "stage": stage, "split": split,
                               **results[split]})
                    line += f", {split} score {results[split]['score']:.2f}"
                if selector.update(epoch + 1, results):
                    ckpts.save(checkpoint.BEST, epoch + 1, variables, selector.best)
            logging.info("%s (training %.1f s, %.1f samples/s, %.0f %% of it waiting for "
                         "input)", line, seconds, speed["samples_per_s"],
                         100 * speed["input_wait_fraction"])
            save_last(epoch + 1, 0, None)
            if stop.signum:
                raise Interrupted(stop.signum, f"interrupted after epoch {epoch + 1}; "
                                  "checkpoint saved. Run the same command to resume.")

        if two_stage:  # --- evaluate, select (two-stage: over the linear-evaluation epochs)
            selector, clf_params = linear_evaluation(config, model, state, data, mesh, log,
                                                     stop)
            variables = {"params": {**state.params, "classifier": clf_params},
                         "batch_stats": state.batch_stats}
            ckpts.save(checkpoint.BEST, selector.best["epoch"], variables, selector.best)

    # --- save
    best = selector.best
    results = {"method": config.method, "dataset": data.name, "seed": config.train.seed,
               "selection": selector.protocol, "stage": "linear" if two_stage else "train",
               "epoch": best["epoch"], "test": best["test"], "test_split": data.test_split,
               "init_from": config.model.init_from or None, "cycles": data.sizes,
               "skipped": data.skipped,
               # what standardised the inputs (resp_jax.predict reuses it on new recordings)
               "norm": list(data.norm)}
    if "val" in best:
        results["val"] = best["val"]
    if jax.process_index() == 0:
        logging_utils.write_json(workdir / "results.json", results)
    return results
