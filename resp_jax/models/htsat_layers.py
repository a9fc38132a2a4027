"""The layers of HTS-AT (`resp_jax.models.htsat`): Swin blocks with shifted-window attention and
a relative position bias, patch merging, and the constants they need (docs/method.md §12).

Parameter names follow the converted checkpoints (tools/convert_clap.py, tools/convert_opera.py):
a block holds ``norm1, attn/{qkv, proj, relative_position_bias_table}, norm2, fc1, fc2``; patch
merging ``norm, reduction``. Attention runs in the compute dtype with the softmax in float32;
the relative position bias and the shift mask (-100 between tokens of different regions, as
the Swin code) are added to the float32 logits.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

trunc_normal = nn.initializers.truncated_normal(stddev=0.02)  # the Swin code's Linear init
SHIFT_MASK = -100.0  # the Swin code's logit offset between tokens of different regions


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
    """[window^2, window^2] int32: the bias-table row of each (query, key) pair of a window
    (tokens row-major; row (dh + w - 1) * (2w - 1) + (dw + w - 1) for offsets dh, dw)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    flat = coords.reshape(2, -1)
    rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0) + (window - 1)
    index = (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)
    index.setflags(write=False)
    return index


@functools.lru_cache(maxsize=None)
def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[windows, window^2, window^2] float32: 0 between tokens of the same region of the
    cyclically shifted map, -100 between different regions (regions: the last ``window`` and
    last ``shift`` rows and columns split each axis in three)."""
    def regions(size):
        i = np.arange(size)
        return (i >= size - window).astype(np.int32) + (i >= size - shift).astype(np.int32)
    label = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = partition(label[None, :, :, None], window)[..., 0].reshape(-1, window * window)
    diff = windows[:, None, :] != windows[:, :, None]
    mask = np.where(diff, SHIFT_MASK, 0.0).astype(np.float32)
    mask.setflags(write=False)
    return mask


def partition(x, window: int):
    """[B, H, W, C] -> [B * (H / w) * (W / w), w, w, C], windows row-major per example."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def merge(windows, window: int, height: int, width: int):
    """The inverse of `partition`: [B * windows, w, w, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


@functools.lru_cache(maxsize=None)
def bicubic_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(index [size_out, 4] int32, weight [size_out, 4] float64): PyTorch's
    ``interpolate(mode='bicubic', align_corners=True)`` along one axis as four taps per output
    (Keys' cubic, A = -0.75, source position i (in - 1) / (out - 1), neighbours clamped to the
    edges), as HTS-AT stretches a spectrogram's frames to its input length."""
    a = -0.75
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = np.arange(size_out) * scale
    base = np.floor(src).astype(np.int64)
    t = src - base

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    weight = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    index = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, size_in - 1).astype(np.int32)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def stretch(x, size_out: int):
    """``x [B, T, F]`` stretched to ``[B, size_out, F]`` along T (`bicubic_taps`)."""
    index, weight = bicubic_taps(x.shape[1], size_out)
    taps = jnp.take(x, jnp.asarray(index), axis=1)  # [B, out, 4, F]
    return jnp.einsum("botf,ot->bof", taps, jnp.asarray(weight, x.dtype))


def drop_path(x, rate, key):
    """Stochastic depth per example: keep with probability 1 - ``rate`` (a float or a traced
    scalar), kept rows scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / jnp.maximum(keep, 1e-12).astype(x.dtype), jnp.zeros_like(x))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows ``[B * windows, N, C]``, fused qkv (output
    laid out [3, heads, head_dim]), a learned relative position bias per head;
    ``attention_dropout`` on the weights and on the output projection (transformers' CLAP:
    attention_probs_dropout_prob in both places)."""

    dim: int
    heads: int
    window: int
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, train: bool):
        n_win, tokens, _ = x.shape
        head_dim = self.dim // self.heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=trunc_normal, name="qkv")(x)
        qkv = qkv.reshape(n_win, tokens, 3, self.heads, head_dim)
        q = qkv[:, :, 0] * jnp.asarray(head_dim ** -0.5, qkv.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, qkv[:, :, 1]).astype(jnp.float32)
        table = self.param("relative_position_bias_table", trunc_normal,
                           ((2 * self.window - 1) ** 2, self.heads), jnp.float32)
        bias = table[relative_position_index(self.window)]  # [N, N, heads]
        logits = logits + jnp.transpose(bias, (2, 0, 1))[None]
        if mask is not None:  # [windows, N, N], the same for every example
            windows = mask.shape[0]
            logits = logits.reshape(-1, windows, self.heads, tokens, tokens)
            logits = (logits + jnp.asarray(mask)[None, :, None]).reshape(
                n_win, self.heads, tokens, tokens)
        weights = jax.nn.softmax(logits, axis=-1)
        if train and self.attention_dropout > 0:
            weights = nn.Dropout(self.attention_dropout, deterministic=False)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), qkv[:, :, 2])
        out = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=trunc_normal, name="proj")(out.reshape(n_win, tokens, -1))
        return nn.Dropout(self.attention_dropout, deterministic=not train)(out)


class SwinBlock(nn.Module):
    """x + attn(norm1(x)) over (shifted) windows, then x + mlp(norm2(x)), on ``[B, H, W, C]``.

    A map no larger than the window is one window, never shifted (the Swin code's rule).
    ``dropout`` acts after the MLP's output (transformers' hidden_dropout_prob; the HTS-AT
    code's drop_rate also acts after the activation and the attention projection: OPERA-CT
    trains with 0 there, docs/fidelity.md).
    ``drop_path`` (a float or a traced scalar: `HTSATEncoder` scans blocks) is the block's
    stochastic depth rate; it draws from the 'dropout' rng when ``train`` and ``stochastic``.
    """

    dim: int
    heads: int
    window: int
    shift: int = 0
    mlp_ratio: float = 4.0
    eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic: bool = False
    dtype: Any = jnp.float32

    def _norm(self, name):
        return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32,
                            use_fast_variance=False, name=name)

    @nn.compact
    def __call__(self, x, train: bool, drop_path_rate=0.0):
        b, h, w, c = x.shape
        window, shift = self.window, self.shift
        if min(h, w) <= window:
            window, shift = min(h, w), 0
        if h % window or w % window:
            raise ValueError(f"a {h} x {w} token map does not split into {window} x {window} "
                             "windows")
        dropping = train and self.stochastic
        y = self._norm("norm1")(x)
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = shift_mask(h, w, window, shift) if shift else None
        y = WindowAttention(self.dim, self.heads, window, self.attention_dropout, self.dtype,
                            name="attn")(
            partition(y, window).reshape(-1, window * window, c), mask, train)
        y = merge(y.reshape(-1, window, window, c), window, h, w)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        if dropping:
            y = drop_path(y, drop_path_rate, self.make_rng("dropout"))
        x = x + y
        y = self._norm("norm2")(x)
        y = nn.Dense(int(c * self.mlp_ratio), dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=trunc_normal, name="fc1")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=trunc_normal,
                     name="fc2")(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        if dropping:
            y = drop_path(y, drop_path_rate, self.make_rng("dropout"))
        return x + y


class PatchMerging(nn.Module):
    """[B, H, W, C] -> [B, H/2, W/2, 2C]: each 2 x 2 neighbourhood concatenated in the order
    (0, 0), (1, 0), (0, 1), (1, 1) (row, column), LayerNorm, Linear without bias."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"patch merging needs an even token map, got {x.shape[1:3]}")
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32,
                         use_fast_variance=False, name="norm")(x)
        return nn.Dense(x.shape[-1] // 2, use_bias=False, dtype=self.dtype,
                        param_dtype=jnp.float32, kernel_init=trunc_normal, name="reduction")(x)
