"""Training steps, optimiser, schedule, linear evaluation and the whole run on tiny data."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resp_jax import (checkpoint, configuration, linear_eval, losses, metrics, optim, parallel,
                      selection, steps, train)
from resp_jax.models.heads import Classifier
from resp_jax.data import run_data
from resp_jax.models import build_model
from resp_jax.stopping import Interrupted, NonFiniteLoss
from resp_jax.train_state import create_train_state
from train_helpers import CONFIGS, EXPERIMENTS, ROOT, cli_overrides, tiny_config

FRAMES = 32


def _batch(seed=0, batch=8, real=8, frames=FRAMES):
    rng = np.random.default_rng(seed)
    return {
        "view1": rng.normal(size=(batch, 64, frames)).astype(np.float32),
        "view2": rng.normal(size=(batch, 64, frames)).astype(np.float32),
        "label": np.array([0, 1, 2, 3, 0, 1, 2, 3][:batch], np.int32),
        "sex+age_group": np.array([0, 1, 2, 3, 0, -1, 2, 1][:batch], np.int32),
        "sex+age_group+label": rng.integers(0, 16, batch).astype(np.int32),
        "device": np.array([0, 0, 1, 1, 2, 2, 3, -1][:batch], np.int32),
        "location": np.array([0, 1, 2, 3, 4, 5, 6, 0][:batch], np.int32),
        "mode": np.array([0, 1, 0, 1, 0, 1, 0, 1][:batch], np.int32),
        "diagnosis": np.array([0, 2, 2, 3, -1, 5, 2, 7][:batch], np.int32),
        "sex": np.array([0, 1, 1, 0, -1, 0, 1, 1][:batch], np.int32),
        "mask": (np.arange(batch) < real).astype(np.float32),
    }


def _setup(name, mesh, **overrides):
    config = configuration.resolve(tiny_config(name, **overrides))
    model = build_model(config, 4)
    tx = optim.make_optimizer(config, steps_per_epoch=10)
    state = create_train_state(config, model, tx, (64, FRAMES), mesh)
    step = steps.make_train_step(model, tx, config, np.array([.1, .2, .3, .4], np.float32),
                                 mesh, optim.schedule(config, 10))
    return config, model, state, step


def _fields(config, batch):
    keep = ("view1", "view2", "mask") + configuration.fields(config)
    return {k: batch[k] for k in keep}


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(jax.devices()[:1])


@pytest.mark.parametrize("name", [n if n in ("ce", "mscl") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS])
def test_every_method_step_lowers_its_loss_on_a_fixed_batch(name, mesh):
    config, model, state, step = _setup(name, mesh)
    batch = parallel.to_global(_fields(config, _batch()), mesh)
    history = []
    with jax.transfer_guard("disallow"):  # no host round trip inside the loop of steps
        for _ in range(6):
            state, m = step(state, batch)
            history.append(m["loss"])
    history = [float(x) for x in jax.device_get(history)]
    assert all(np.isfinite(history))
    assert history[-1] < history[0] - 0.05, history
    assert int(state.step) == 6
    expected_terms = {"loss/ce"} if name == "ce" else {f"loss/{f}" for f, _ in config.loss.heads}
    if name == "hybrid":
        expected_terms.add("loss/ce")
    assert set(m) == expected_terms | {"loss", "count", "lr", "grad_norm"}
    assert float(m["count"]) == 8
    # lr is the schedule's rate at the step that was taken, grad_norm the gradient's norm
    np.testing.assert_allclose(float(m["lr"]), float(optim.schedule(config, 10)(5)), rtol=1e-6)
    assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0


@pytest.mark.slow
def test_two_stage_state_has_no_classifier_one_stage_has_no_projector(mesh):
    _, _, scl_state, _ = _setup("mscl", mesh)
    assert set(scl_state.params) == {"encoder", "proj_label", "proj_sex_age_group"}
    _, _, ce_state, _ = _setup("ce", mesh)
    assert set(ce_state.params) == {"encoder", "classifier"}
    _, _, hybrid_state, _ = _setup("hybrid", mesh)
    assert set(hybrid_state.params) == {"encoder", "classifier", "proj_label"}


@pytest.mark.slow
def test_encoder_starts_from_converted_weights(mesh, tmp_path):
    from resp_jax.models import cnn6
    channels = (4, 8, 8, 16)
    encoder = cnn6.CNN6Encoder(channels)
    variables = encoder.init(jax.random.key(7), jnp.zeros((1, 64, FRAMES)), train=False)
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree.map(lambda a: a + 0.5, variables["batch_stats"])}
    cnn6.save_encoder(tmp_path / "enc", variables, {"channels": channels})
    config, _, state, _ = _setup("mscl", mesh, model__init_from=str(tmp_path / "enc"))
    assert config.train.lr == 1e-4  # fine-tuning rate chosen automatically
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(
            {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]})):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"channels \(4, 8, 8, 16\), but config.model.channels "
                                         r"is \(4, 8, 8, 32\)"):
        _setup("mscl", mesh, model__init_from=str(tmp_path / "enc"),
               model__channels=(4, 8, 8, 32))


@pytest.mark.slow  # two state inits and a run restored: ~10 s under load
def test_encoder_starts_from_a_finished_runs_selected_model(mesh, tmp_path):
    """model.init_run: the selected encoder (ckpt/best) of a finished run, not its
    classifier; linear_probe needs a starting encoder; init_from and init_run exclude each
    other."""
    config, model, state, _ = _setup("ce", mesh)
    run = tmp_path / "run"
    with checkpoint.Checkpoints(run) as ckpts:
        ckpts.save(checkpoint.BEST, 3, {"params": state.params,
                                        "batch_stats": state.batch_stats}, {"epoch": 3})
    (run / "config.json").write_text(config.to_json())
    (run / "results.json").write_text("{}")
    probe = tiny_config("ce", model__init_run=str(run))
    probe.method, probe.loss.heads = "linear_probe", ()
    probe = configuration.resolve(probe)
    started = create_train_state(probe, build_model(probe, 4), optim.make_optimizer(probe, 10),
                                 (64, FRAMES), mesh)
    assert set(started.params) == {"encoder"} and probe.train.lr == 1e-4
    for a, b in zip(jax.tree.leaves((state.params["encoder"], state.batch_stats["encoder"])),
                    jax.tree.leaves((started.params["encoder"],
                                     started.batch_stats["encoder"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    probe.model.init_run = ""
    with pytest.raises(ValueError, match="'linear_probe' measures a trained encoder"):
        configuration.resolve(probe)
    with pytest.raises(ValueError, match="both name a starting encoder"):
        configuration.resolve(tiny_config("ce", model__init_run=str(run),
                                          model__init_from=str(run)))


MANY_HEADS = (("label", 0.4), ("mode", 0.3), ("diagnosis", 0.2), ("sex", 0.1))


@pytest.mark.slow
def test_hybrid_and_mscl_losses_are_the_papers_combinations(mesh):
    """The step's loss equals alpha CE + (1 - alpha) SupCon (hybrid) and the weighted head sum
    (M-SCL, any number of metadata heads from the config alone), recomputed here from the
    model outputs with resp_jax.losses."""
    b = _batch()
    for name, overrides in (("hybrid", {}), ("mscl", {}), ("mscl_device_location", {}),
                            ("mscl", {"loss__heads": MANY_HEADS})):
        config, model, state, _ = _setup(name, mesh, **overrides)
        assert set(state.params) == {"encoder"} | ({"classifier"} if name == "hybrid" else set()) \
            | {"proj_" + h.replace("+", "_") for h, _ in config.loss.heads}
        fn = losses.batch_loss(model, config, configuration.heads(config),
                               np.array([.1, .2, .3, .4], np.float32))
        loss, (_, terms) = fn(state.params, state.batch_stats, b, jax.random.key(0))
        v = {"params": state.params, "batch_stats": state.batch_stats}
        enc = lambda x, v=v, model=model: model.apply(v, x, True, b["mask"], method="encode",
                                                        mutable=["batch_stats"])
        f1, upd = enc(b["view1"])
        f2, _ = model.apply({"params": state.params, **upd}, b["view2"], True, b["mask"],
                            method="encode", mutable=["batch_stats"])
        feats = jnp.concatenate([f1, f2])
        z = {h: model.apply({"params": state.params}, feats, h, method="project")
             for h, _ in config.loss.heads}
        if name == "hybrid":
            logits = model.apply({"params": state.params}, feats, method="classify")
            want = losses.hybrid(logits, z["label"], b["label"], b["mask"],
                                 jnp.array([.1, .2, .3, .4]), alpha=0.5)
        else:
            want = sum(w * losses.supcon(z[h], b[h], b["mask"], 0.06)
                       for h, w in config.loss.heads)
            assert set(terms) == {f"loss/{h}" for h, _ in config.loss.heads}
            for h, _ in config.loss.heads:  # each head's own, unweighted term
                np.testing.assert_allclose(float(terms[f"loss/{h}"]),
                                           float(losses.supcon(z[h], b[h], b["mask"], 0.06)),
                                           rtol=1e-6)
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mscl", "ce"])
def test_padding_rows_do_not_change_the_step(name, mesh):
    """Padded rows (mask 0) take no part: their contents cannot change loss or state."""
    config, _, state_a, step = _setup(name, mesh)
    _, _, state_b, _ = _setup(name, mesh)
    a, b = _batch(real=5), _batch(real=5)
    rng = np.random.default_rng(9)
    for key in ("view1", "view2"):
        b[key][5:] = 100 * rng.normal(size=b[key][5:].shape)
    b["label"][5:] = 0
    state_a, ma = step(state_a, parallel.to_global(_fields(config, a), mesh))
    state_b, mb = step(state_b, parallel.to_global(_fields(config, b), mesh))
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    assert float(ma["count"]) == 5
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_train_step_donates_the_state_it_is_given(mesh):
    """The old state's buffers are reused for the new one (no second copy of the model and
    optimiser state on the device)."""
    config, _, state, step = _setup("scl", mesh)
    new, _ = step(state, parallel.to_global(_fields(config, _batch()), mesh))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))


@pytest.mark.slow
def test_bn_statistics_per_view_follow_the_reference(mesh):
    """With bn_per_view the encoder runs once per view, so the running statistics take two
    momentum-0.1 updates per step; with one call, one update over both views."""
    b = _batch()
    stats = {}
    for per_view in (True, False):
        config, model, state, step = _setup("scl", mesh, model__bn_per_view=per_view)
        kernel = np.asarray(state.params["encoder"]["conv_block1"]["conv"]["kernel"])
        new, _ = step(state, parallel.to_global(_fields(config, b), mesh))  # donates state
        stats[per_view] = np.asarray(new.batch_stats["encoder"]["conv_block1"]["bn"]["mean"])
    # conv_block1's batch mean is the conv output's mean: compute it independently (numpy).
    def conv_mean(x):
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        out = np.zeros(kernel.shape[-1])
        for i in range(5):
            for j in range(5):
                out += pad[:, i:i + 64, j:j + FRAMES].mean() * kernel[i, j, 0]
        return out
    m1, m2 = conv_mean(b["view1"]), conv_mean(b["view2"])
    np.testing.assert_allclose(stats[True], 0.9 * (0.1 * m1) + 0.1 * m2, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(stats[False], 0.1 * (m1 + m2) / 2, rtol=1e-3, atol=1e-6)


def test_mscl_steps_match_the_reference_step_in_pytorch(mesh):
    """Three M-SCL steps (two heads, views encoded in separate calls, PyTorch Adam with L2)
    from the same weights on the same views as the reference code's step, written here in
    PyTorch: the same losses, weights and BatchNorm running statistics (float32, rtol 1e-4)."""
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    config, model, state, step = _setup("mscl", mesh)
    heads = dict(config.loss.heads)                   # {'label': 0.75, 'sex+age_group': 0.25}
    params = jax.tree.map(np.asarray, state.params)
    stats = jax.tree.map(np.asarray, state.batch_stats)
    t = lambda a: torch.tensor(np.array(a), requires_grad=True)  # noqa: E731
    blocks = [{"w": t(np.transpose(params["encoder"][f"conv_block{i}"]["conv"]["kernel"],
                                   (3, 2, 0, 1))),
               "g": t(params["encoder"][f"conv_block{i}"]["bn"]["scale"]),
               "b": t(params["encoder"][f"conv_block{i}"]["bn"]["bias"]),
               "mean": torch.tensor(stats["encoder"][f"conv_block{i}"]["bn"]["mean"]),
               "var": torch.tensor(stats["encoder"][f"conv_block{i}"]["bn"]["var"])}
              for i in range(1, 5)]
    proj = {h: {f"{layer}/{k}": t(params["proj_" + h.replace("+", "_")][layer][k].T
                                  if k == "kernel" else
                                  params["proj_" + h.replace("+", "_")][layer][k])
                for layer in ("hidden", "out") for k in ("kernel", "bias")} for h in heads}
    leaves = [v for blk in blocks for k, v in blk.items() if k in "wgb"] + \
        [v for p in proj.values() for v in p.values()]
    opt = torch.optim.Adam(leaves, lr=config.train.lr, weight_decay=config.train.weight_decay)

    def encoder(x):
        x = x[:, None]
        for blk in blocks:
            x = F.conv2d(x, blk["w"], padding=2)
            x = F.batch_norm(x, blk["mean"], blk["var"], blk["g"], blk["b"], training=True,
                             momentum=0.1, eps=1e-5)
            x = F.avg_pool2d(F.relu(x), 2)
        x = x.mean(dim=3)
        return x.max(dim=2).values + x.mean(dim=2)

    def project(h, f):
        p = proj[h]
        return F.linear(F.relu(F.linear(f, p["hidden/kernel"], p["hidden/bias"])),
                        p["out/kernel"], p["out/bias"])

    def supcon(z1, z2, y, tau=0.06):  # the reference's SupConLoss, all-but-self denominator
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = z @ z.T / tau
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        yy = torch.cat([y, y])
        not_self = 1.0 - torch.eye(len(yy))
        pos = (yy[:, None] == yy[None, :]).float() * not_self
        log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
        return -((pos * log_prob).sum(1) / pos.sum(1)).mean()

    for k in range(3):
        b = _batch(seed=k)
        b["sex+age_group"] = np.array([0, 1, 2, 3, 0, 1, 2, 1], np.int32)[
            np.random.default_rng(k).permutation(8)]
        state, m = step(state, parallel.to_global(_fields(config, b), mesh))
        f1 = encoder(torch.tensor(b["view1"]))
        f2 = encoder(torch.tensor(b["view2"]))
        loss = sum(w * supcon(project(h, f1), project(h, f2), torch.tensor(b[h]).long())
                   for h, w in heads.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        np.testing.assert_allclose(float(m["loss"]), float(loss.detach()), rtol=1e-4)
    got = jax.tree.map(np.asarray, state.params)
    for i, blk in enumerate(blocks, start=1):
        block = got["encoder"][f"conv_block{i}"]
        np.testing.assert_allclose(np.transpose(block["conv"]["kernel"], (3, 2, 0, 1)),
                                   blk["w"].detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(block["bn"]["scale"], blk["g"].detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
        bs = jax.tree.map(np.asarray, state.batch_stats)["encoder"][f"conv_block{i}"]["bn"]
        np.testing.assert_allclose(bs["mean"], blk["mean"].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(bs["var"], blk["var"].numpy(), rtol=1e-4, atol=1e-6)
    for h in heads:
        np.testing.assert_allclose(got["proj_" + h.replace("+", "_")]["out"]["kernel"].T,
                                   proj[h]["out/kernel"].detach().numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_adam_l2_matches_pytorch_adam_with_weight_decay():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    target = rng.normal(size=(5,)).astype(np.float32)
    w0 = rng.normal(size=(3,)).astype(np.float32)

    tw = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.Adam([tw], lr=0.01, betas=(0.9, 0.999), weight_decay=0.1)
    for _ in range(20):
        opt.zero_grad()
        loss = ((torch.tensor(a) @ tw - torch.tensor(target)) ** 2).mean()
        loss.backward()
        opt.step()

    tx = optim.adam_l2(0.01, 0.1)
    w = jnp.asarray(w0)
    state = tx.init(w)
    grad = jax.grad(lambda w: jnp.mean((a @ w - target) ** 2))
    for _ in range(20):
        updates, state = tx.update(grad(w), state, w)
        w = w + updates
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_periodic_cosine_is_pytorchs_cosine_annealing_stepped_per_epoch():
    torch = pytest.importorskip("torch")
    config = configuration.resolve(tiny_config("scl", epochs=30, train__lr=1e-3,
                                          train__cosine_t_max=4))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-6)
    expected = []
    for _ in range(30):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    per_step = optim.schedule(config, steps_per_epoch=3)
    got = [float(per_step(3 * e + k)) for e in range(30) for k in range(3)]
    np.testing.assert_allclose(got, np.repeat(expected, 3), rtol=1e-5)
    assert max(expected[8:]) > 0.99e-3  # it rises again after T_max: a periodic cosine


def test_single_cosine_decays_once_over_all_epochs():
    config = configuration.resolve(tiny_config("scl", epochs=10, train__lr=1e-3,
                                          train__schedule="cosine"))
    lrs = [float(optim.epoch_lr(config, e)) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-3) and all(np.diff(lrs) < 0)
    assert lrs[-1] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 9 / 10)) / 2)


def _reference_warmup_rates(lr, eta_min, epochs, warm_epochs, total_batches, cosine=True):
    """Patch-Mix's main.py / util/misc.py with --warm (and --cosine): adjust_learning_rate
    before each 1-based epoch, then warmup_learning_rate before each batch, re-implemented
    with numpy (the reference's own warm_epochs, warmup_from, warmup_to formulas)."""
    warmup_from = lr * 0.1
    if cosine:
        warmup_to = eta_min + (lr - eta_min) * (1 + np.cos(np.pi * warm_epochs / epochs)) / 2
    else:
        warmup_to = lr
    rates = []
    for epoch in range(1, epochs + 1):
        epoch_rate = (eta_min + (lr - eta_min) * (1 + np.cos(np.pi * epoch / epochs)) / 2
                      if cosine else lr)
        for batch_id in range(total_batches):
            rate = epoch_rate
            if epoch <= warm_epochs:
                p = (batch_id + (epoch - 1) * total_batches) / (warm_epochs * total_batches)
                rate = warmup_from + p * (warmup_to - warmup_from)
            rates.append(rate)
    return np.array(rates)


@pytest.mark.parametrize("schedule", ["cosine_from_1", "constant"])
def test_warmup_matches_patchmix_warmup_learning_rate(schedule):
    config = configuration.resolve(tiny_config("ce", epochs=12, train__lr=1e-3,
                                          train__eta_min=1e-6, train__schedule=schedule,
                                          train__warmup_epochs=3))
    per_step = optim.schedule(config, steps_per_epoch=4)
    got = [float(per_step(s)) for s in range(12 * 4)]
    want = _reference_warmup_rates(1e-3, 1e-6, 12, 3, 4, cosine=schedule != "constant")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == pytest.approx(1e-4) and all(np.diff(got[:12]) > 0)


def test_warmup_off_by_default_and_then_continuous_with_one_cosine():
    config = configuration.resolve(tiny_config("ce", epochs=10, train__lr=1e-3,
                                          train__schedule="cosine"))
    assert config.train.warmup_epochs == 0
    plain = [float(optim.schedule(config, 5)(s)) for s in range(50)]
    np.testing.assert_allclose(plain, [float(optim.epoch_lr(config, s // 5)) for s in range(50)])
    config.train.warmup_epochs = 2
    warm = [float(optim.schedule(config, 5)(s)) for s in range(50)]
    np.testing.assert_allclose(warm[10:], plain[10:])  # after the warm-up: the same schedule
    # the warm-up heads for where the one cosine goes on (its rate at epoch 2, 0-based)
    end = float(optim.epoch_lr(config, 2))
    assert warm[9] == pytest.approx(1e-4 + 0.9 * (end - 1e-4), rel=1e-5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        configuration.resolve(tiny_config("ce", train__warmup_epochs=-1))


def test_validation_split_is_patient_disjoint_and_seeded():
    patients = np.repeat([f"p{i}" for i in range(20)], np.arange(1, 21))  # 210 cycles
    a = selection.val_mask(patients, 0.2, seed=1)
    assert a.sum() >= 0.2 * len(patients) and a.sum() < 0.2 * len(patients) + 20
    assert not set(patients[a]) & set(patients[~a])  # no patient on both sides
    np.testing.assert_array_equal(a, selection.val_mask(patients, 0.2, seed=1))
    assert not np.array_equal(a, selection.val_mask(patients, 0.2, seed=2))
    assert (~selection.val_mask(["x", "y"], 0.99, seed=0)).any()  # training keeps a patient
    with pytest.raises(ValueError, match="at least 2 training patients"):
        selection.val_mask(["x", "x"], 0.2, seed=0)


def test_selector_protocols():
    runs = [{"test": {"score": 50.0}, "val": {"score": 60.0}},
            {"test": {"score": 70.0}, "val": {"score": 55.0}},
            {"test": {"score": 65.0}, "val": {"score": 60.0}}]  # a val tie: keep epoch 1
    chosen = {}
    for protocol in selection.PROTOCOLS:
        sel = selection.Selector(protocol)
        for epoch, r in enumerate(runs, start=1):
            sel.update(epoch, r)
        sel = selection.Selector.from_state_dict(json.loads(json.dumps(sel.state_dict())))
        chosen[protocol] = (sel.best["epoch"], sel.best["test"]["score"])
    assert chosen == {"test_best": (2, 70.0), "val": (1, 50.0), "last": (3, 65.0)}
    with pytest.raises(KeyError, match="needs 'val' metrics"):
        selection.Selector("val").update(1, {"test": {"score": 1.0}})


# ------------------------------------------------------------------------------------------
# Whole runs on a tiny synthetic ICBHI dataset


def _run_config(name, data, **overrides):
    config = tiny_config(name, **overrides)
    config.data.root, config.data.tfds_dir = str(data["root"]), str(data["tfds"])
    return config


def _lines(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _evals(workdir):
    """The per-epoch lines of metrics.jsonl (the others are the per-step logging windows)."""
    return [l for l in _lines(workdir) if "split" in l]


@pytest.fixture(scope="module")
def baseline(tiny_icbhi, tmp_path_factory):
    """An uninterrupted M-SCL run (2 pretraining epochs, 3 linear epochs); also records how
    often each step was traced and at which steps the loop read the loss back."""
    workdir = tmp_path_factory.mktemp("baseline")
    reads, read_metrics = [], train.read_metrics

    def counted(acc):
        host = read_metrics(acc)
        reads.append(host["epoch/count"])
        return host

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "read_metrics", counted)
        _compile_once(patch)  # a second trace of a step fails the run
        results = train.train_and_evaluate(_run_config("mscl", tiny_icbhi), workdir)
    return workdir, results, {"reads": reads}


def _compile_once(patch):
    """Wraps the pure steps in chex.assert_max_traces(n=1): retracing raises."""
    import chex

    for name in ("train_step_fn", "eval_step_fn"):
        make = getattr(steps, name)
        patch.setattr(steps, name, lambda *a, make=make: chex.assert_max_traces(make(*a), n=1))


@pytest.mark.slow
def test_two_stage_run_writes_every_output(baseline):
    workdir, results, traces = baseline
    assert results["cycles"]["train"] % 8  # the last batch of an epoch is padded, and still
    # one compilation for every step (the fixture's chex.assert_max_traces)
    # The host reads the loss every train.log_every (2) steps and at the end of each epoch,
    # never once per step: the examples counted so far at each read.
    n, steps = results["cycles"]["train"], -(-results["cycles"]["train"] // 8)
    per_epoch = [min(8 * k, n) for k in range(1, steps + 1) if k % 2 == 0 or k == steps]
    assert steps >= 3 and len(per_epoch) < steps
    assert traces["reads"] == per_epoch * 2
    every = _lines(workdir)
    # at each read, one line with the window's mean of every term, the lr and the grad norm
    logged = [l for l in every if "step" in l]
    reads_at = [k for k in range(1, steps + 1) if k % 2 == 0 or k == steps]
    assert [(l["epoch"], l["step"]) for l in logged] == \
        [(e + 1, e * steps + k) for e in range(2) for k in reads_at]
    for l in logged:
        assert set(l) == {"stage", "step", "epoch", "loss", "loss/label", "loss/sex+age_group",
                          "lr", "grad_norm"}
        assert l["stage"] == "pretrain" and l["lr"] == pytest.approx(1e-3, rel=0.2)
        assert l["loss"] == pytest.approx(0.75 * l["loss/label"] + 0.25 * l["loss/sex+age_group"],
                                          rel=1e-5)
    lines = [l for l in every if "split" in l]
    assert [(l["stage"], l["epoch"], l["split"]) for l in lines] == \
        [("pretrain", 1, "train"), ("pretrain", 2, "train")] + \
        [("linear", e, s) for e in (1, 2, 3) for s in ("train", "test")]
    tests = [l for l in lines if l["split"] == "test"]
    for l in tests:
        assert set(l) >= {"epoch", "stage", "split", "loss", "sp", "se", "score", "hs"}
        assert l["score"] == pytest.approx((l["sp"] + l["se"]) / 2)
    best = max(tests, key=lambda l: l["score"])  # test_best: the paper's protocol
    assert results["selection"] == "test_best" and results["stage"] == "linear"
    scores = np.array([l["score"] for l in tests])  # the last (up to) 10 selection epochs
    recent = results["test_score_recent"]
    assert recent["epochs"] == [tests[0]["epoch"], tests[-1]["epoch"]]
    assert (recent["mean"], recent["std"]) == pytest.approx((scores.mean(), scores.std()))
    assert results["epoch"] == best["epoch"]
    assert results["test"] == {k: best[k] for k in ("loss", "sp", "se", "score", "hs")}
    assert json.loads((workdir / "results.json").read_text()) == results
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["lr"] == 1e-3 and config["loss"]["class_weighted"] is True
    assert config["data"]["test_split"] == "test"
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoint.Checkpoints(workdir).latest_step(checkpoint.BEST) == results["epoch"]


@pytest.mark.slow
def test_linear_stage_matches_a_pytorch_classifier_on_the_frozen_features(baseline):
    """The per-epoch linear stage, redone here with PyTorch's Linear, Adam (L2) and weighted
    CrossEntropyLoss on the finished run's frozen encoder (inference-mode BatchNorm) over the
    same shuffled linear batches: the same loss every epoch (one Adam state across epochs),
    the same test Score every epoch (test features from the same encoder and
    standardisation) and the selected classifier's weights (rtol 1e-4)."""
    torch = pytest.importorskip("torch")
    from resp_jax import finished_run

    workdir, results, _ = baseline
    run = finished_run.load(workdir)
    config = run.config
    data = run_data.load(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = {"params": {"encoder": run.variables["params"]["encoder"]},
                 "batch_stats": run.variables["batch_stats"]}

    def encode(x):
        return np.asarray(run.model.apply(variables, jnp.asarray(x), False, method="encode"))

    state_key = jax.random.split(jax.random.key(config.train.seed))[1]
    width = run.variables["params"]["classifier"]["linear"]["kernel"].shape[0]
    init = Classifier(data.num_classes).init(jax.random.fold_in(state_key, 1),
                                             jnp.zeros((1, width)))["params"]["linear"]
    linear = torch.nn.Linear(width, data.num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(np.asarray(init["kernel"]).T))
        linear.bias.copy_(torch.tensor(np.asarray(init["bias"])))
    opt = torch.optim.Adam(linear.parameters(), lr=config.linear_eval.lr,
                           weight_decay=config.linear_eval.weight_decay)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(data.class_weights))
    test = [b for b in data.eval_batches("test", mesh)]
    x_test = np.concatenate([encode(b["x"])[np.asarray(b["mask"]) > 0] for b in test])
    y_test = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"]) > 0] for b in test])
    logged = {(l["epoch"], l["split"]): l for l in _evals(workdir) if l["stage"] == "linear"}
    for epoch in range(1, config.linear_eval.epochs + 1):
        total = count = 0.0
        for b in data.linear_batches(epoch, mesh):
            real = np.asarray(b["mask"]) > 0
            feats = torch.tensor(encode(b["x"])[real])
            loss = ce(linear(feats), torch.tensor(np.asarray(b["label"])[real]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * real.sum(), count + real.sum()
        assert logged[(epoch, "train")]["loss"] == pytest.approx(total / count, rel=1e-4)
        with torch.no_grad():
            pred = linear(torch.tensor(x_test)).argmax(1).numpy()
        got = metrics.summarize(y_test, pred, dataset=data.name, num_classes=data.num_classes)
        assert logged[(epoch, "test")]["score"] == pytest.approx(got["score"], abs=1e-6)
        if epoch == results["epoch"]:
            selected = {k: v.detach().numpy().copy() for k, v in linear.state_dict().items()}
    kept = run.variables["params"]["classifier"]["linear"]
    np.testing.assert_allclose(np.asarray(kept["kernel"]).T, selected["weight"], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(kept["bias"]), selected["bias"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("features", ["per_epoch", "cached"])
def test_linear_features_per_epoch_or_cached(features, tiny_icbhi, tmp_path):
    """linear_eval.features='per_epoch' (the reference) encodes the shuffled training batches
    anew every epoch; 'cached' encodes the file-order batches once."""
    calls, lines = {"linear": [], "eval": []}, []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(linear_eval, "logging",  # linear_eval's log lines, nobody else's
                      types.SimpleNamespace(info=lambda msg, *a: lines.append(msg % a)))
        for name, key in (("linear_batches", "linear"), ("eval_batches", "eval")):
            original = getattr(run_data.RunData, name)

            def counted(self, *args, original=original, key=key):
                calls[key].append(args[0])
                return original(self, *args)
            patch.setattr(run_data.RunData, name, counted)
        results = train.train_and_evaluate(
            _run_config("scl", tiny_icbhi, epochs=1, linear_eval__features=features), tmp_path)
    if features == "per_epoch":
        assert calls["linear"] == [1, 2, 3] and "train" not in calls["eval"]
    else:
        assert calls["linear"] == [] and calls["eval"].count("train") == 1
    assert calls["eval"].count("test") == 1  # test features: once, the encoder is frozen
    assert results["stage"] == "linear" and 0 <= results["test"]["score"] <= 100
    # progress: a line per linear epoch here (3 epochs), each with its loss and test score
    progress = [line for line in lines if line.startswith("linear epoch")]
    assert [line.split(":")[0] for line in progress] == [f"linear epoch {e}/3" for e in (1, 2, 3)]
    assert all("loss" in line and "test score" in line for line in progress)


def test_linear_stage_logs_about_ten_progress_lines():
    assert [linear_eval.progress_every(n) for n in (1, 3, 10, 25, 100)] == [1, 1, 1, 3, 10]


@pytest.mark.slow
def test_one_stage_run_with_validation_selection(tiny_icbhi, tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        _compile_once(patch)
        results = train.train_and_evaluate(
            _run_config("ce", tiny_icbhi, epochs=3, eval__selection="val"), tmp_path)
    lines = _evals(tmp_path)
    assert {(l["stage"], l["split"]) for l in lines} == {("train", s)
                                                          for s in ("train", "test", "val")}
    val = [l for l in lines if l["split"] == "val"]
    chosen = max(val, key=lambda l: l["score"])  # ties: the first
    assert results["selection"] == "val" and results["epoch"] == chosen["epoch"]
    test_then = next(l for l in lines if l["split"] == "test" and l["epoch"] == chosen["epoch"])
    assert results["test"]["score"] == test_then["score"]
    assert results["val"]["score"] == chosen["score"]


@pytest.mark.slow
def test_a_run_resumed_after_its_last_epoch_writes_the_selected_epochs_predictions(
        trained_runs, tiny_icbhi, tmp_path, monkeypatch):
    """A one-stage run stopped after its last evaluation resumes with nothing left to train:
    the predictions of the epoch it selected earlier come from beside ckpt/best, and every
    output equals the uninterrupted run's (the session's 'ce' run, of the same config)."""
    whole = trained_runs["ce"]
    config = _run_config("ce", tiny_icbhi, epochs=2, eval__selection="val")
    want = json.loads((whole / "results.json").read_text())
    evaluate, calls = train.evaluate, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:  # the last epoch's evaluation
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args)

    monkeypatch.setattr(train, "evaluate", interrupted)
    with pytest.raises(Interrupted, match="after epoch 2"):
        train.train_and_evaluate(config, tmp_path / "resumed")
    monkeypatch.undo()
    assert train.train_and_evaluate(config, tmp_path / "resumed") == want
    assert len(calls) == 2  # resuming evaluated nothing
    assert ((tmp_path / "resumed" / "predictions.csv").read_text()
            == (whole / "predictions.csv").read_text())


@pytest.mark.slow
def test_last_epoch_selection(tiny_icbhi, tmp_path):
    results = train.train_and_evaluate(
        _run_config("hybrid", tiny_icbhi, epochs=2, eval__selection="last"), tmp_path)
    last = [l for l in _evals(tmp_path) if l["split"] == "test"][-1]
    assert results["epoch"] == 2 and results["test"]["score"] == last["score"]


def _signal_at(monkeypatch, epoch, batch, signum=signal.SIGTERM):
    """Sends ``signum`` to this process while batch ``batch`` of ``epoch`` is being read."""
    original = run_data.RunData.train_batches

    def batches(self, epoch_, skip, mesh):
        for i, b in enumerate(original(self, epoch_, skip, mesh)):
            if (epoch_, skip + i) == (epoch, batch):
                os.kill(os.getpid(), signum)
            yield b

    monkeypatch.setattr(run_data.RunData, "train_batches", batches)


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_matches(baseline, tiny_icbhi, tmp_path,
                                                    monkeypatch):
    base_dir, base_results, _ = baseline
    _signal_at(monkeypatch, epoch=1, batch=3)
    with pytest.raises(Interrupted, match="checkpoint saved") as info:
        train.train_and_evaluate(_run_config("mscl", tiny_icbhi), tmp_path)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    config = configuration.resolve(_run_config("mscl", tiny_icbhi))
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        step, meta = ckpts.latest_step(), ckpts.meta()
    assert meta["epoch"] == 1 and 0 < meta["batch"] <= 3  # inside the second epoch
    assert not (tmp_path / "results.json").exists()
    monkeypatch.undo()
    results = train.train_and_evaluate(config, tmp_path)  # the same command again
    assert results == base_results
    assert _lines(tmp_path) == _lines(base_dir)
    assert step > 0


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_icbhi, tmp_path, monkeypatch):
    """From the second epoch on the loss is NaN (injected: a label outside the classes, which
    the cross-entropy turns into NaN under jit). Inf inputs would not do: XLA's CPU max/min
    (ReLU, max pooling) drop NaNs."""
    original = run_data.RunData.train_batches

    def poisoned(self, epoch, skip, mesh):
        for b in original(self, epoch, skip, mesh):
            if epoch == 1:
                b = dict(b, label=jnp.full_like(b["label"], 99))
            yield b

    monkeypatch.setattr(run_data.RunData, "train_batches", poisoned)
    config = _run_config("ce", tiny_icbhi, epochs=3)
    with pytest.raises(NonFiniteLoss,
                       match=r"training loss became nan in epoch 2 .*last good checkpoint is "
                             r".*ckpt/last/\d+"):
        train.train_and_evaluate(config, tmp_path)
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        meta = ckpts.meta()
    assert meta["epoch"] == 1 and meta["batch"] == 0  # the end of the first (good) epoch
    assert not (tmp_path / "results.json").exists()
    assert [l["epoch"] for l in _evals(tmp_path)] == [1, 1]  # train + test of epoch 1


@pytest.mark.slow
def test_sigkill_then_same_command_ends_like_an_uninterrupted_run(baseline, tiny_icbhi,
                                                                  tmp_path):
    base_dir, base_results, _ = baseline
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "resp_jax.main", f"--config={CONFIGS}/mscl.py",
               f"--workdir={workdir}"] + cli_overrides(_run_config("mscl", tiny_icbhi))
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")  # as conftest
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    last = workdir / "ckpt" / "last"
    deadline = time.time() + 240
    while not (last.is_dir() and any(p.name.isdigit() for p in last.iterdir())):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (workdir / "results.json").exists(), "the run ended before it was killed"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming from" in done.stderr
    assert json.loads((workdir / "results.json").read_text()) == base_results
    assert _lines(workdir) == _lines(base_dir)
