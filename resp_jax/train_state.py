"""The train state: parameters, BatchNorm statistics, optimiser state, step and PRNG key, made
replicated on the mesh (or only its shapes, the restore target, via `jax.eval_shape`)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from absl import logging

from resp_jax import configuration, parallel
from resp_jax.models import backbone


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array  # optimiser steps taken (int32)
    rng: jax.Array   # raw key data (uint32[2]) of jax.random.key(train.seed) split once; feeds
    #                  dropout (folded with the step) and the linear classifier's initialisation

    @property
    def key(self) -> jax.Array:
        """``rng`` as a typed PRNG key."""
        return jax.random.wrap_key_data(self.rng)


def create_train_state(config, model, tx, input_shape: tuple, mesh, *,
                       pretrained: Any = "load", abstract: bool = False) -> TrainState:
    """A new replicated TrainState for inputs ``[batch, *input_shape]`` (or, with ``abstract``,
    its shapes and shardings: the restore target, with no weights read or initialised).

    ``pretrained``: 'load' reads ``model.init_from`` through the backbone; None trains from
    scratch; or encoder variables given directly. Two-stage methods have no classifier here:
    it is fitted in the second stage.
    """
    init_key, state_key = jax.random.split(jax.random.key(config.train.seed))
    input_shape = tuple(int(d) for d in input_shape)

    def init(encoder_vars, text_vars=None):
        x = jnp.zeros((2,) + input_shape, jnp.float32)
        variables = model.init({"params": init_key, "dropout": init_key}, x, train=False)
        params = dict(variables["params"])
        batch_stats = dict(variables.get("batch_stats", {}))
        if configuration.is_two_stage(config):
            params.pop("classifier")
        if encoder_vars is not None:
            params["encoder"] = encoder_vars["params"]
            if "batch_stats" in encoder_vars:
                batch_stats["encoder"] = encoder_vars["batch_stats"]
        if text_vars is not None:  # BTS: the converted text tower (resp_jax.bts)
            params["text"] = {"tower": text_vars["params"]}
        return TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(state_key))

    shapes = jax.eval_shape(init, None)
    sharding = jax.tree.map(lambda _: parallel.replicated(mesh), shapes)
    if abstract:
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, sharding)
    if isinstance(pretrained, str) and pretrained == "load":
        if config.model.get("init_run"):
            from resp_jax import finished_run
            encoder_vars = finished_run.selected_encoder(config.model.init_run)
        else:
            encoder_vars = backbone(config.model.name).pretrained(config, input_shape)
        if encoder_vars is not None:
            logging.info("Encoder initialised from %s",
                         config.model.init_from or config.model.init_run)
    else:
        encoder_vars = pretrained
    if encoder_vars is not None:
        want = {"params": shapes.params["encoder"]}
        if "batch_stats" in encoder_vars:
            want["batch_stats"] = shapes.batch_stats["encoder"]
        want = jax.tree.map(lambda s: s.shape, want)
        got = jax.tree.map(jnp.shape, dict(encoder_vars))
        if want != got:
            where = config.model.init_from or config.model.get("init_run") or "the encoder given"
            raise ValueError(f"{where}: pretrained encoder shapes {got} do not fit the model "
                             f"{want} (compare config.model with that run's or encoder's)")
    text_vars = None
    if config.method == "bts" and isinstance(pretrained, str) and pretrained == "load":
        from resp_jax import bts
        text_vars = bts.pretrained_text(config)
        if text_vars is not None:
            logging.info("Text tower initialised from %s", config.model.text.init_from)
    return jax.jit(init, out_shardings=sharding)(encoder_vars, text_vars)
