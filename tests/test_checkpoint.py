"""Checkpoints: round trip with shardings, keep-one, best kept apart, incomplete saves ignored."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resp_jax import checkpoint, parallel
from resp_jax.train_state import TrainState


def _state(mesh, value=1.0):
    params = {"w": jnp.full((4, 3), value), "b": jnp.arange(3.0)}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))
    state = TrainState(params=params, batch_stats={"mean": jnp.zeros(3)},
                             opt_state=tx.init(params), step=jnp.asarray(5, jnp.int32),
                             rng=jax.random.key_data(jax.random.key(3)))
    return parallel.replicate(state, mesh)


def test_round_trip_keeps_values_structure_and_sharding(tmp_path):
    mesh = parallel.make_mesh(jax.devices()[:2])
    state = _state(mesh, 2.5)
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        assert ckpts.restore(checkpoint.LAST, checkpoint.abstract(state)) is None
        ckpts.save(checkpoint.LAST, 7, state, {"epoch": 1, "batch": 3, "acc": {"loss": 0.5}})
    with checkpoint.Checkpoints(tmp_path) as ckpts:  # a new process would do this
        restored, meta = ckpts.restore(checkpoint.LAST, checkpoint.abstract(state))
    assert meta == {"epoch": 1, "batch": 3, "acc": {"loss": 0.5}}
    assert isinstance(restored, TrainState)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.dtype == a.dtype and b.sharding.is_fully_replicated
        assert b.sharding.mesh.devices.size == 2


def test_keeps_only_the_newest_and_best_apart(tmp_path):
    mesh = parallel.make_mesh(jax.devices()[:1])
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        for step in (1, 2, 3):
            ckpts.save(checkpoint.LAST, step, _state(mesh, step), {"epoch": step})
        ckpts.save(checkpoint.BEST, 2, {"params": {"w": jnp.ones(2)}}, {"epoch": 2})
        assert ckpts.latest_step() == 3 and ckpts.latest_step(checkpoint.BEST) == 2
        target = checkpoint.abstract(_state(mesh))
        restored, meta = ckpts.restore(checkpoint.LAST, target)
        assert meta["epoch"] == 3 and float(restored.params["w"][0, 0]) == 3.0
        best, _ = ckpts.restore(checkpoint.BEST, {"params": {"w": jnp.zeros(2)}})
        np.testing.assert_array_equal(best["params"]["w"], np.ones(2))
    steps = sorted(p.name for p in (tmp_path / "ckpt" / "last").iterdir()
                   if p.name.isdigit())
    assert steps == ["3"]


def test_saving_an_existing_step_again_is_a_no_op(tmp_path):
    mesh = parallel.make_mesh(jax.devices()[:1])
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        ckpts.save(checkpoint.LAST, 4, _state(mesh, 1.0), {"epoch": 1})
        ckpts.save(checkpoint.LAST, 4, _state(mesh, 9.0), {"epoch": 9})
        restored, meta = ckpts.restore(checkpoint.LAST, checkpoint.abstract(_state(mesh)))
    assert meta["epoch"] == 1 and float(restored.params["w"][0, 0]) == 1.0


def test_an_unfinished_save_is_ignored(tmp_path):
    """A process killed while saving leaves a temporary directory, never a half checkpoint."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        ckpts.save(checkpoint.LAST, 1, _state(mesh, 1.0), {"epoch": 1})
    partial = tmp_path / "ckpt" / "last" / "2.orbax-checkpoint-tmp-123456"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        assert ckpts.latest_step() == 1
        restored, meta = ckpts.restore(checkpoint.LAST, checkpoint.abstract(_state(mesh)))
    assert meta["epoch"] == 1


def test_restoring_into_another_model_names_the_checkpoint(tmp_path):
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        ckpts.save(checkpoint.LAST, 1, {"w": jnp.ones((4, 3))}, {})
        with pytest.raises(RuntimeError, match=r"cannot restore checkpoint .*ckpt/last/1"):
            ckpts.restore(checkpoint.LAST, {"w": jax.ShapeDtypeStruct((5, 3), jnp.float32),
                                            "v": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_meta_alone_is_readable(tmp_path):
    mesh = parallel.make_mesh(jax.devices()[:1])
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        assert ckpts.meta() is None
        ckpts.save(checkpoint.LAST, 3, _state(mesh), {"epoch": 2, "batch": 1})
        assert ckpts.meta() == {"epoch": 2, "batch": 1}
