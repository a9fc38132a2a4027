"""One experiment, trained and evaluated: `train_and_evaluate(config, workdir)`.

CE, SupCon, SimCLR, hybrid and M-SCL are one train step with different loss terms
(`losses.batch_loss`). One-stage methods (ce, hybrid) train the classifier with the encoder and
are evaluated every epoch; two-stage methods (scl, simclr, mscl) pretrain, then fit a linear
classifier on frozen features (`linear_eval`). `train_and_evaluate` reads top to bottom: mesh,
data, model, state, restore, loop, evaluate, select, save (results.json, and the selected
epoch's per-cycle test predictions with their patient-bootstrap intervals: `evaluation`).

The loop dispatches steps without waiting for the device: it reads the step metrics back only
every ``train.log_every`` steps, at an epoch's end and before an interrupted epoch's checkpoint
(`read_metrics`), and then logs the window's mean of every loss term, the learning rate and
the gradient norm. Stopping cleanly is `resp_jax.stopping`'s job.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resp_jax import (bts, checkpoint, configuration, evaluation, logging_utils, optim,
                      parallel, selection, steps)
from resp_jax.data import run_data
from resp_jax.linear_eval import linear_evaluation
from resp_jax.models import build_model
from resp_jax.stopping import Interrupted, StopFlag, nonfinite
from resp_jax.train_state import create_train_state


def read_metrics(acc) -> dict:
    """The loop's only host read: the running sums of `accumulate` as Python floats."""
    return {k: float(v) for k, v in jax.device_get(acc).items()}


@jax.jit
def accumulate(acc, m):
    """Running sums kept on device: the epoch's count-weighted loss (``epoch/loss``,
    ``epoch/count``) and, since the last read, every step metric (``window/<key>``) and the
    number of steps (``window/steps``)."""
    n = m["count"]
    out = {"epoch/loss": acc["epoch/loss"] + m["loss"] * n, "epoch/count": acc["epoch/count"] + n,
           "window/steps": acc["window/steps"] + 1}
    for key, value in m.items():
        if key != "count":
            out[f"window/{key}"] = acc.get(f"window/{key}", 0.0) + value
    return out


def _zero_window(acc: dict) -> dict:
    return {k: (0.0 if k.startswith("window/") else v) for k, v in acc.items()}


def train_epoch(state, epoch: int, skip: int, acc, *, train_step, data, mesh, config, stage,
                log, stop, ckpts, save_last):
    """One epoch of training from batch ``skip`` (``acc``: the running sums saved with an
    interrupted epoch, or None); returns (state, mean loss, samples/s, input-wait fraction)."""
    batch, epochs = config.train.batch_size, config.train.epochs
    steps_per_epoch = data.num_batches("train", batch)
    zero = {"epoch/loss": 0.0, "epoch/count": 0.0, "window/steps": 0.0}
    acc = jax.tree.map(jnp.float32, acc if skip and acc else zero)
    progress = logging_utils.Progress(steps_per_epoch, f"{stage} {epoch + 1}/{epochs}",
                                      initial=skip)
    t0, k, logged = time.perf_counter(), skip, skip
    host = {"epoch/loss": 0.0, "epoch/count": 0.0}
    batches = logging_utils.InputTimer(data.train_batches(epoch, skip, mesh))
    for batch_ in batches:
        if stop.signum:
            host = read_metrics(acc)
            if not np.isfinite(host["epoch/loss"]):
                raise nonfinite(host["epoch/loss"], f"in epoch {epoch + 1}", ckpts)
            save_last(state, epoch, k, host)
            raise Interrupted(stop.signum, f"interrupted in epoch {epoch + 1} at batch "
                              f"{k}/{steps_per_epoch}; checkpoint saved in {ckpts.path()}. "
                              "Run the same command to resume.")
        state, m = train_step(state, batch_)
        acc = accumulate(acc, m)
        k += 1
        if k % config.train.log_every == 0 or k == steps_per_epoch:
            host = read_metrics(acc)
            total, count = host["epoch/loss"], host["epoch/count"]
            if not np.isfinite(total):
                raise nonfinite(total, f"in epoch {epoch + 1} by step {k}", ckpts)
            n = max(host["window/steps"], 1.0)
            log.write_step(stage, epoch * steps_per_epoch + k, epoch + 1,
                           {key[len("window/"):]: v / n for key, v in host.items()
                            if key.startswith("window/") and key != "window/steps"})
            acc = jax.tree.map(jnp.float32, _zero_window(host))
            progress.update(k - logged, (k - logged) * batch, total / max(count, 1))
            logged = k
    progress.close()
    seconds = time.perf_counter() - t0  # the last read waited for the device
    loss = host["epoch/loss"] / max(host["epoch/count"], 1.0)
    return state, loss, (k - skip) * batch / seconds, batches.seconds / seconds


def evaluate(eval_step, variables, data, mesh) -> dict:
    """The gathered outputs (`steps.gather`: labels, predictions, probabilities, loss) of
    every evaluated split ('test', and 'val' under validation selection)."""
    return {split: steps.gather([eval_step(variables, b) for b in data.eval_batches(split, mesh)])
            for split in data.eval_splits}


# The selected epoch's test outputs, saved beside ckpt/best when it is selected, so a resumed
# run writes the predictions of the epoch it reports.
SELECTED_OUTPUTS = "selected_test_outputs.npz"


def keep_selected(ckpts, epoch: int, outputs: dict) -> None:
    if jax.process_index() == 0:
        path = ckpts.directory / SELECTED_OUTPUTS
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, epoch=epoch, label=outputs["label"], pred=outputs["pred"],
                 prob=outputs["prob"])
        tmp.replace(path)


def selected_outputs(ckpts, epoch: int) -> dict | None:
    """The outputs `keep_selected` saved; None for a run that selected its epoch before
    they were kept (it ends without predictions.csv; `report` falls back to ckpt/best)."""
    path = ckpts.directory / SELECTED_OUTPUTS
    if not path.is_file():
        logging.warning("%s not found: this run selected epoch %d before its test outputs were "
                        "kept; it writes no %s and no intervals", path, epoch,
                        evaluation.PREDICTIONS_FILE)
        return None
    with np.load(path) as saved:
        if int(saved["epoch"]) != epoch:
            raise RuntimeError(f"{path} holds epoch {int(saved['epoch'])}'s test outputs, but "
                               f"the run selected epoch {epoch}: the workdir was altered")
        return {k: saved[k] for k in ("label", "pred", "prob")}


def write_predictions(workdir: Path, data, outputs: dict, results: dict, config) -> None:
    """predictions.csv of the selected epoch, and the patient-bootstrap intervals of its test
    figures in ``results`` (docs/method.md §11); process 0 only."""
    predictions = evaluation.from_outputs(data.features[data.test_split], outputs,
                                          data.features.schema)
    evaluation.write(workdir / evaluation.PREDICTIONS_FILE, predictions)
    resamples = int(config.eval.bootstrap_resamples)
    results["test_interval"] = evaluation.bootstrap(predictions, resamples)
    results["bootstrap"] = evaluation.bootstrap_record(predictions, resamples)


def train_and_evaluate(config, workdir) -> dict:
    """Runs (or resumes) one experiment in ``workdir``; returns what results.json holds."""
    config = configuration.resolve(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    two_stage = configuration.is_two_stage(config)
    stage = "pretrain" if two_stage else "train"

    # --- mesh
    mesh = parallel.make_mesh()
    for section, field in (("train", "batch_size"), ("eval", "batch_size")):
        parallel.check_batch_size(config[section][field], mesh, f"{section}.{field}")
    logging.info("Mesh: %d device(s) over %d process(es): %s", mesh.devices.size,
                 jax.process_count(), jax.devices()[0].platform)

    # --- data
    data = run_data.load(config)
    epochs = config.train.epochs
    steps_per_epoch = data.num_batches("train", config.train.batch_size)

    # --- model
    prompts = bts.prompts(config, workdir, write=False) if config.method == "bts" else None
    model = build_model(config, data.num_classes, prompts=prompts)
    learning_rate = optim.schedule(config, steps_per_epoch)
    tx = optim.make_optimizer(config, steps_per_epoch)
    train_step = steps.make_train_step(model, tx, config, data.class_weights, mesh,
                                       learning_rate)
    eval_step = steps.make_eval_step(model, data.class_weights, mesh)

    # --- state, restore
    ckpts = checkpoint.Checkpoints(workdir)
    target = create_train_state(config, model, tx, data.input_shape, mesh, abstract=True)
    restored = ckpts.restore(checkpoint.LAST, target)
    configuration.check_resume(workdir, config, restored is not None)
    if prompts is not None and jax.process_index() == 0:
        bts.write_prompts(workdir, prompts)  # what predict and a resumed run read back
    if restored is None:
        state = create_train_state(config, model, tx, data.input_shape, mesh)
        meta = {"epoch": 0, "batch": 0, "lines": 0, "acc": None,
                "selector": selection.Selector(config.eval.selection).state_dict()}
    else:
        state, meta = restored
        logging.info("Resuming from %s: epoch %d, batch %d", ckpts.path(), meta["epoch"] + 1,
                     meta["batch"])
    selector = selection.Selector.from_state_dict(meta["selector"])
    log = logging_utils.MetricsLog(workdir, keep_lines=meta["lines"])

    def save_last(state, epoch, k, acc):
        """The 'last' checkpoint with the loop's position, so a killed run resumes exactly."""
        position = {"epoch": epoch, "batch": k, "lines": log.lines,
                    "selector": selector.state_dict(), "acc": acc}
        ckpts.save(checkpoint.LAST, epoch * steps_per_epoch + k, state, position)

    # --- loop
    selected = None  # the selected epoch's test outputs, once selected in this process
    with StopFlag() as stop, contextlib.closing(ckpts), contextlib.closing(log):
        for epoch in range(meta["epoch"], epochs):
            skip = meta["batch"] if epoch == meta["epoch"] else 0
            state, train_loss, rate, waiting = train_epoch(
                state, epoch, skip, meta["acc"], train_step=train_step, data=data, mesh=mesh,
                config=config, stage=stage, log=log, stop=stop, ckpts=ckpts, save_last=save_last)
            log.write({"epoch": epoch + 1, "stage": stage, "split": "train", "loss": train_loss})
            for key, value in (("samples_per_s", rate), ("input_wait_fraction", waiting)):
                log.scalar(f"{stage}/speed/{key}", value, epoch + 1)  # TensorBoard only
            line = f"{stage} epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}"
            if not two_stage:  # --- evaluate, select (one-stage: every epoch)
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                outputs = evaluate(eval_step, variables, data, mesh)
                results = {split: steps.scores(o, data.name, data.num_classes)
                           for split, o in outputs.items()}
                for split, result in results.items():
                    log.write({"epoch": epoch + 1, "stage": stage, "split": split, **result})
                    line += f", {split} score {result['score']:.2f}"
                if selector.update(epoch + 1, results):
                    ckpts.save(checkpoint.BEST, epoch + 1, variables, selector.best)
                    selected = outputs["test"]
                    keep_selected(ckpts, epoch + 1, selected)
            logging.info("%s (%.1f samples/s, %.0f %% of the time waiting for input)", line,
                         rate, 100 * waiting)
            save_last(state, epoch + 1, 0, None)
            if stop.signum:
                raise Interrupted(stop.signum, f"interrupted after epoch {epoch + 1}; "
                                  "checkpoint saved. Run the same command to resume.")

        if two_stage:  # --- evaluate, select (two-stage: over the linear-evaluation epochs)
            selector, clf_params, selected = linear_evaluation(config, model, state, data,
                                                                  mesh, log, stop)
            variables = {"params": {**state.params, "classifier": clf_params},
                         "batch_stats": state.batch_stats}
            ckpts.save(checkpoint.BEST, selector.best["epoch"], variables, selector.best)

    # --- save
    best = selector.best
    results = {"method": config.method, "dataset": data.name, "seed": config.train.seed,
               "selection": selector.protocol, "stage": "linear" if two_stage else "train",
               "epoch": best["epoch"], "test": best["test"], "test_split": data.test_split,
               "init_from": config.model.init_from or None,
               "init_run": config.model.get("init_run") or None, "cycles": data.sizes,
               "skipped": data.skipped,
               # what standardised the inputs (resp_jax.predict reuses it on new recordings)
               "norm": list(data.norm)}
    if "val" in best:
        results["val"] = best["val"]
    # the test Score's mean and std over the selection stage's last epochs: the swing that
    # test_best selection takes the top of (README, "Comparing with the paper")
    results["test_score_recent"] = selector.recent()
    if jax.process_index() == 0:
        if selected is None:  # selected before this process resumed the run
            selected = selected_outputs(ckpts, best["epoch"])
        if selected is not None:
            write_predictions(workdir, data, selected, results, config)
        logging_utils.write_json(workdir / "results.json", results)
    return results
