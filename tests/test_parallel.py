"""Data parallelism: one global batch on 1 or 2 devices gives the same training."""

import jax
import numpy as np
import pytest

from resp_jax import configuration, optim, parallel, steps, train
from resp_jax.models import build_model
from resp_jax.train_state import create_train_state
from train_helpers import tiny_config

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)

# Two devices reduce BatchNorm statistics and the losses in a different order than one:
# float32 rounding, amplified a little by 4 Adam steps.
LOSS_RTOL = 1e-5
PARAM_ATOL = 2e-5


def _batches(n_steps, batch, frames, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_steps):
        mask = np.ones(batch, np.float32)
        if i == n_steps - 1:
            mask[batch - 3:] = 0  # a padded last batch
        out.append({
            "view1": rng.normal(size=(batch, 64, frames)).astype(np.float32),
            "view2": rng.normal(size=(batch, 64, frames)).astype(np.float32),
            "label": rng.integers(0, 4, batch).astype(np.int32),
            "sex+age_group": rng.integers(-1, 4, batch).astype(np.int32),
            "mask": mask,
        })
    return out


def _train(config, devices, batches, frames):
    mesh = parallel.make_mesh(devices)
    model = build_model(config, 4)
    tx = optim.make_optimizer(config, steps_per_epoch=2)
    state = create_train_state(config, model, tx, (64, frames), mesh)
    step = steps.make_train_step(model, tx, config, np.array([.1, .2, .3, .4], np.float32), mesh,
                                 optim.schedule(config, 2))
    losses = []
    for b in batches:
        state, m = step(state, parallel.to_global(b, mesh))
        losses.append(float(m["loss"]))
    return np.array(losses), jax.device_get(state.params), jax.device_get(state.batch_stats)


@pytest.mark.parametrize("method", ["mscl", "hybrid"])
def test_one_and_two_devices_train_the_same(method):
    assert len(jax.devices()) >= 2, "conftest gives the session 2 CPU devices"
    config = configuration.resolve(tiny_config(method, batch_size=8))
    frames = 32
    batches = _batches(4, 8, frames)
    l1, p1, s1 = _train(config, jax.devices()[:1], batches, frames)
    l2, p2, s2 = _train(config, jax.devices()[:2], batches, frames)
    assert np.all(np.diff(l1[:3]) != 0)  # the steps do change the model
    np.testing.assert_allclose(l2, l1, rtol=LOSS_RTOL)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(b, a, atol=PARAM_ATOL, rtol=0)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(b, a, atol=PARAM_ATOL, rtol=1e-5)


def test_batch_is_sharded_and_state_replicated():
    mesh = parallel.make_mesh(jax.devices()[:2])
    batch = parallel.to_global({"x": np.zeros((4, 3), np.float64),
                                "y": np.arange(4, dtype=np.int64)}, mesh)
    assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec(parallel.AXIS)
    shards = batch["y"].addressable_shards
    assert [s.data.tolist() for s in shards] == [[0, 1], [2, 3]]
    state = parallel.replicate({"w": np.ones(3)}, mesh)
    assert state["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(parallel.to_host(batch["y"]), np.arange(4))


def test_batch_size_must_split_over_devices():
    mesh = parallel.make_mesh(jax.devices()[:2])
    assert parallel.check_batch_size(8, mesh) == 8
    with pytest.raises(ValueError, match=r"train.batch_size=7 must be a positive multiple of "
                                         r"the 2 devices .*e.g. 6 or 8"):
        parallel.check_batch_size(7, mesh)
    with pytest.raises(ValueError, match="eval.batch_size=0"):
        parallel.check_batch_size(0, mesh, "eval.batch_size")


def test_prefetch_keeps_order_and_content():
    mesh = parallel.make_mesh(jax.devices()[:2])
    batches = [{"i": np.full(2, i)} for i in range(5)]
    got = [int(parallel.to_host(b["i"])[0]) for b in parallel.prefetch(batches, mesh, size=2)]
    assert got == [0, 1, 2, 3, 4]


def test_distributed_initialize_only_when_asked(monkeypatch):
    """No launch variables: one process; RESP_JAX_DISTRIBUTED=1 asks JAX to detect the job
    (the launch settings themselves: tests/test_multiprocess.py)."""
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    assert parallel.initialize({}) is None
    assert calls == []
    assert parallel.initialize({parallel.DISTRIBUTED_ENV: "1"}).source == "auto"
    assert len(calls) == 1 and calls[0]["coordinator_address"] is None
