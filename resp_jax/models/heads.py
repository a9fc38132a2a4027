"""Backbone-agnostic parts of every model: projectors, the linear classifier, and `Model`,
which bundles any encoder from the registry with them (docs/method.md §3).

The heads sit on the encoder's pooled features ``[batch, D]``, so every method (CE, SupCon,
SimCLR, hybrid, M-SCL) runs on every backbone. Parameter names are those of the converted
checkpoints and of saved runs: ``encoder``, ``classifier/linear``, ``proj_<head>/{hidden,out}``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resp_jax.models.cnn6 import BatchNorm


def _head_key(head: str) -> str:
    return head.replace("+", "_")


def head_module_name(head: str) -> str:
    """Submodule name of the projector for ``head`` (a metadata field such as 'sex+age_group')."""
    return "proj_" + _head_key(head)


def _torch_linear_init(fan_in: int):
    """PyTorch's default nn.Linear init: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    # kaiming_uniform(a=sqrt(5)) == variance_scaling(1/3, fan_in, uniform): bound 1/sqrt(fan_in).
    kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return kernel_init, bias_init


def torch_dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    """A Dense layer initialised as PyTorch's nn.Linear, float32 parameters."""
    kernel_init, bias_init = _torch_linear_init(fan_in)
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=bias_init, name=name)


POOLS = ("mean", "attention")  # Model.proj_pool: what the projectors see


class Projector(nn.Module):
    """Contrastive head Linear(hidden) -> ReLU -> Linear(out); PyTorch default Linear init.
    With ``batch_norm``, Linear(hidden) -> BatchNorm1d -> ReLU -> Linear(out) (Patch-Mix's
    projector, models/projector.py; PyTorch's BatchNorm numbers, `cnn6.BatchNorm`, batch
    statistics over the rows whose ``mask`` is 1 when ``train``); with ``layer_norm`` a
    LayerNorm there instead (PAFA's ``--norm_type ln``, method/pafa.py).
    With ``attention_pool`` the input is tokens ``[batch, L, D]``, first pooled with weights
    softmax over L of Linear(D, 1) (PAFA's ``temporal_attn``, docs/method.md §10).

    Output is not L2-normalised (the losses do that) and is float32.
    """

    hidden: int = 512
    out: int = 128
    dtype: Any = jnp.float32
    batch_norm: bool = False
    layer_norm: bool = False
    attention_pool: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False,
                 mask: jax.Array | None = None) -> jax.Array:
        if self.batch_norm and self.layer_norm:
            raise ValueError("a projector has a BatchNorm or a LayerNorm, not both")
        if self.attention_pool:
            if features.ndim != 3:
                raise ValueError(f"attention pooling needs tokens [batch, L, D], got shape "
                                 f"{features.shape}")
            scores = torch_dense(1, features.shape[-1], self.dtype, "attention")(features)
            weights = jax.nn.softmax(scores.astype(jnp.float32), axis=1).astype(features.dtype)
            features = jnp.sum(features * weights, axis=1)
        h = torch_dense(self.hidden, features.shape[-1], self.dtype, "hidden")(features)
        if self.batch_norm:
            h = BatchNorm(dtype=self.dtype, name="bn")(h, train, mask)
        if self.layer_norm:
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                             use_fast_variance=False, name="ln")(h)
        h = nn.relu(h)
        z = torch_dense(self.out, self.hidden, self.dtype, "out")(h)
        return z.astype(jnp.float32)


class Classifier(nn.Module):
    """Linear classifier on encoder features; PyTorch default Linear init; float32 logits.
    With ``norm``, a LayerNorm (PyTorch's default eps 1e-5) first: AST's head ``mlp_head``,
    which Patch-Mix copies as its classifier."""

    num_classes: int
    dtype: Any = jnp.float32
    norm: bool = False

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.norm:
            features = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                                    use_fast_variance=False, name="norm")(features)
        logits = torch_dense(self.num_classes, features.shape[-1], self.dtype,
                             "linear")(features)
        return logits.astype(jnp.float32)


def _unit(z: jax.Array) -> jax.Array:
    """z / ||z|| per row (F.normalize's eps)."""
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def inputs(model: "Model", batch) -> dict:
    """What a model reads from a batch besides ``x``: a BTS model's ``meta`` (the codes of
    its sentence fields, [B, F]); nothing for the others."""
    if model.text is None:
        return {}
    return {"meta": jnp.stack([jnp.asarray(batch[f], jnp.int32) for f in model.text.fields],
                              axis=-1)}


class Model(nn.Module):
    """Encoder + linear classifier + one projector per contrastive head (M-SCL has several).

    ``encoder`` is any module ``(x, train, mask) -> [batch, D]`` (see `resp_jax.models`).
    ``text`` (BTS, `resp_jax.bts.PromptText`): the features are then [text ; audio], each
    L2-normalised, the text read from each row's ``meta`` codes (`inputs`).
    Submodules: ``encoder``, ``classifier``, ``proj_<head>`` with '+' in the head name
    replaced by '_' (head 'sex+age_group' -> ``proj_sex_age_group``). Outputs are keyed by the
    head names as given, and are float32 whatever ``dtype`` the computation uses.
    ``proj_pool='attention'``: the projectors pool the encoder's tokens themselves (an encoder
    that returns ``(pooled, tokens)`` when called with ``tokens=True``: BEATs).
    """

    encoder: nn.Module
    num_classes: int = 4
    heads: Sequence[str] = ()
    proj_hidden: int = 512
    proj_out: int = 128
    dtype: Any = jnp.float32
    proj_bn: bool = False
    classifier_norm: bool = False
    proj_ln: bool = False
    proj_pool: str = "mean"
    text: nn.Module | None = None

    def setup(self):
        names = [head_module_name(h) for h in self.heads]
        if len(set(names)) != len(names) or not all(self.heads):
            raise ValueError(f"head names must be non-empty and distinct after replacing '+' "
                             f"with '_', got {tuple(self.heads)!r}")
        if self.proj_pool not in POOLS:
            raise ValueError(f"proj_pool must be one of {POOLS}, got {self.proj_pool!r}")
        self.classifier = Classifier(self.num_classes, self.dtype, self.classifier_norm)
        # A dict attribute named 'proj' gives the submodules the names 'proj_<key>'.
        self.proj = {_head_key(h): Projector(self.proj_hidden, self.proj_out, self.dtype,
                                             self.proj_bn, self.proj_ln,
                                             self.proj_pool == "attention")
                     for h in self.heads}

    def encode(self, x: jax.Array, train: bool, mask: jax.Array | None = None,
               meta: jax.Array | None = None, **kw: Any) -> jax.Array:
        features = self.encoder(x, train, mask, **kw)
        if self.text is None:
            return features
        if meta is None:
            if not self.is_initializing():
                raise ValueError("this model reads each cycle's metadata sentence: pass the "
                                 "codes of its fields (heads.inputs(model, batch))")
            meta = -jnp.ones((x.shape[0], len(self.text.fields)), jnp.int32)
        return jnp.concatenate([_unit(self.text(meta, train)), _unit(features)], axis=-1)

    def classify(self, features: jax.Array) -> jax.Array:
        return self.classifier(features)

    def project(self, features: jax.Array, head: str, train: bool = False,
                mask: jax.Array | None = None) -> jax.Array:
        key = _head_key(head)
        if key not in self.proj:
            raise KeyError(f"no projector for head {head!r}; heads are {tuple(self.heads)!r}")
        return self.proj[key](features, train, mask)

    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None,
                 meta: jax.Array | None = None) -> dict[str, Any]:
        if self.proj_pool == "attention":
            features, tokens = self.encode(x, train, mask, tokens=True)
        else:
            features = tokens = self.encode(x, train, mask, meta)
        return {
            "features": features,
            "logits": self.classify(features),
            "proj": {head: self.project(tokens, head) for head in self.heads},
        }
