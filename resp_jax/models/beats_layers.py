"""The building blocks of the BEATs encoder (`resp_jax.models.beats`, docs/method.md §10):
the relative position buckets, the layer-wise gradient scaling, the weight-normalised
convolutional position embedding, the gated relative-position self-attention and the
deep-norm Transformer layer, each as the reference computes it (microsoft/unilm beats/
backbone.py, modules.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[length, length] int32 bucket of key position j for query position i, as the
    reference's ``_relative_positions_bucket`` (bidirectional; float32 arithmetic like
    PyTorch's): half the buckets per direction, the first half of those exact distances, the
    rest logarithmic up to ``max_distance``, larger distances in the last bucket."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    scaled = (np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(exact))
              / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return (out + np.where(rel < exact, rel, large)).astype(np.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_multiply(x, scale: float):
    """Identity forward, gradient times ``scale`` (the reference's GradMultiply)."""
    return x


grad_multiply.defvjp(lambda x, scale: (x, None), lambda scale, _, g: (g * scale,))

bert_init = nn.initializers.normal(0.02)  # init_bert_params (every Linear of the encoder)
# PyTorch's default Conv2d / Linear weight init (kaiming_uniform_, a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the layers outside the encoder keep it.
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default Linear / Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _xavier(gain: float):
    return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "normal")


class PositionConv(nn.Module):
    """Weight-normalised grouped Conv1d over tokens, 'same' length (an even kernel drops the
    last output), then exact GELU. Parameters ``weight_v [K, C/G, C]`` (flax conv layout),
    ``weight_g [K]`` (norm per kernel position), ``bias [C]``. Initialised as the reference:
    v ~ N(0, 4 / (K C)), g = the norm of v (so the kernel starts equal to v: ``weight_norm``
    computes g from the weight it wraps), bias 0."""

    kernel: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.groups:
            raise ValueError(f"width {c} is not divisible by conv_pos_groups {self.groups}")
        std = math.sqrt(4.0 / (self.kernel * c))
        v = self.param("weight_v", nn.initializers.normal(std), (self.kernel, c // self.groups, c))
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2)))
        g = self.param("weight_g", lambda key, shape: norm.reshape(shape), (self.kernel,))
        b = self.param("bias", nn.initializers.zeros, (c,))
        kernel = (v * (g / norm)[:, None, None]).astype(self.dtype)
        pad = self.kernel // 2
        y = grouped_conv_fft(x.astype(self.dtype), kernel, pad, pad - (1 - self.kernel % 2),
                             self.groups)
        return nn.gelu(y + b.astype(self.dtype), approximate=False)


def grouped_conv_fft(x: jax.Array, kernel: jax.Array, pad_left: int, pad_right: int,
                     groups: int) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (1,), [(pad_left, pad_right)], ('NWC', 'WIO',
    'NWC'), feature_group_count=groups)`` (a cross-correlation; ``x [B, T, C]``, ``kernel
    [K, C/G, C]``) computed through FFTs over time: every frequency mixes each group's
    channels with one small complex matmul. BEATs' position convolution (K = 128 over a few
    hundred tokens) is then about 15x cheaper to differentiate on a CPU than XLA's grouped or
    block-diagonal convolution (0.03 against 0.54 s at width 192, batch 8, 248 tokens, one
    core); the sums are the same to float32 rounding (relative error about 6e-7)."""
    batch, _, c = x.shape
    k, per_group, _ = kernel.shape
    padded = jnp.pad(x, ((0, 0), (pad_left, pad_right), (0, 0)))
    n = padded.shape[1]  # no wrap-around: every output reads n samples at most
    xf = jnp.fft.rfft(padded.astype(jnp.float32), n=n, axis=1).reshape(batch, -1, groups,
                                                                        per_group)
    wf = jnp.conj(jnp.fft.rfft(kernel.astype(jnp.float32), n=n, axis=0)).reshape(
        -1, per_group, groups, c // groups)  # output channel o is in group o // (C / G)
    yf = jnp.einsum("bfgi,figo->bfgo", xf, wf).reshape(batch, -1, c)
    return jnp.fft.irfft(yf, n=n, axis=1)[:, :n - k + 1].astype(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and an additive relative
    position ``bias [H, L, L]``, gated per query and head when ``gated`` (gru_rel_pos)."""

    width: int
    heads: int
    gated: bool
    attention_dropout: float = 0.0
    deep_norm_gain: float = 1.0
    dtype: Any = jnp.float32

    def _dense(self, features, name, gain=None):
        init = bert_init if gain is None else _xavier(gain)
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                        name=name)

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None, train: bool) -> jax.Array:
        batch, length, _ = x.shape
        d = self.width // self.heads
        deep = self.deep_norm_gain != 1.0
        q = self._dense(self.width, "q_proj", 1.0 if deep else None)(x)
        k = self._dense(self.width, "k_proj", 1.0 if deep else None)(x)
        v = self._dense(self.width, "v_proj", self.deep_norm_gain if deep else None)(x)
        q, k, v = (a.reshape(batch, length, self.heads, d) for a in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (d ** -0.5), k).astype(jnp.float32)
        if bias is not None:
            if self.gated:
                gates = self._dense(8, "grep_linear")(q).astype(jnp.float32)
                gates = jax.nn.sigmoid(gates.reshape(batch, length, self.heads, 2, 4).sum(-1))
                grep_a = self.param("grep_a", nn.initializers.ones, (self.heads,))
                gate = gates[..., 0] * (gates[..., 1] * grep_a - 1.0) + 2.0  # [B, L, H]
                logits = logits + jnp.swapaxes(gate, 1, 2)[..., None] * bias[None]
            else:
                logits = logits + bias[None]
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attention_dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, self.width)
        return self._dense(self.width, "out_proj", self.deep_norm_gain if deep else None)(out)


class Layer(nn.Module):
    """Post-LayerNorm Transformer layer with deep-norm residual scaling ``alpha``."""

    width: int
    heads: int
    ffn: int
    gated: bool
    alpha: float = 1.0
    beta: float = 1.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    dtype: Any = jnp.float32

    def _norm(self, name):
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                            use_fast_variance=False, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None, train: bool) -> jax.Array:
        init = bert_init if self.alpha == 1.0 else _xavier(self.beta)
        h = SelfAttention(self.width, self.heads, self.gated, self.attention_dropout,
                          self.beta if self.alpha != 1.0 else 1.0, self.dtype,
                          name="self_attn")(x, bias, train)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        x = self._norm("self_attn_layer_norm")(x * self.alpha + h)
        h = nn.Dense(self.ffn, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                     name="fc1")(x)
        h = nn.gelu(h.astype(jnp.float32), approximate=False).astype(self.dtype)
        h = nn.Dropout(self.activation_dropout, deterministic=not train)(h)
        h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                     name="fc2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return self._norm("final_layer_norm")(x * self.alpha + h)
