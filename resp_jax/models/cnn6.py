"""CNN6 encoder (PANNs architecture) and its converted-weights format (docs/method.md §3, §7).

The encoder maps log-mel spectrograms ``x [batch, mel, frames]`` to ``[batch, channels[-1]]``
features: 4 blocks of 5x5 convolution (stride 1, padding 2, no bias) -> BatchNorm -> ReLU ->
2x2 average pooling (floor, as ``torch.nn.functional.avg_pool2d``), then a global pool.

Two orientations of the spectrogram image exist (docs/method.md §3):

- ``'reference'`` (default; the paper's code): the image is (freq, time) = (H, W). After the
  blocks: mean over time, then max + mean over frequency.
- ``'panns'`` (how PANNs trained the AudioSet weights): the image is (time, freq). After the
  blocks: mean over frequency, then max + mean over time.

In both cases the pooled image is reduced with "mean over W, then max + mean over H", and a
converted PyTorch kernel ``(out, in, kh, kw)`` becomes the flax kernel ``(kh, kw, in, out)``.

BatchNorm (`BatchNorm`) follows PyTorch's BatchNorm2d exactly: momentum 0.1 (new running =
0.9 * old + 0.1 * batch), eps 1e-5, normalisation by the biased two-pass batch variance and a
running variance updated with the unbiased one.

The projectors and the classifier are shared by every backbone (`resp_jax.models.heads`).

Converted encoders are directories in `resp_jax.models.converted`'s format (``encoder.json``
with channels and layout, ``state/`` with ``{'params', 'batch_stats'}``); write one with
:func:`save_encoder` (tools/convert_panns.py does) and read it with :func:`load_pretrained`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resp_jax.models import converted

DEFAULT_CHANNELS = (64, 128, 256, 512)
LAYOUTS = ("reference", "panns")
BN_MOMENTUM = 0.9  # flax convention; PyTorch momentum 0.1
BN_EPSILON = 1e-5

ENCODER_FORMAT, META_FILE, STATE_DIR = (converted.ENCODER_FORMAT, converted.META_FILE,
                                        converted.STATE_DIR)


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(channels)
    if not channels or not all(isinstance(c, (int, np.integer)) and c > 0 for c in channels):
        raise ValueError(
            f"channels must be a non-empty sequence of positive ints, got {channels!r}")
    return tuple(int(c) for c in channels)


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last, with torch.nn.BatchNorm2d's numbers.

    Training mode normalises with the mean and biased variance (two-pass) of the rows whose
    ``mask`` [batch] is 1 and updates the running statistics as PyTorch does: momentum 0.1 and
    the unbiased variance. Inference mode uses the running statistics. Statistics and
    normalisation are float32 whatever ``dtype`` the output has.

    Why not flax's nn.BatchNorm: it updates the running variance with the biased variance,
    and given a mask it materialises the mask at the activation's full size and selects
    through it; weighting rows by the mask lets XLA fuse it into the reductions (2-3 % of a
    CPU training step, docs/benchmarks.md). Variables are named as nn.BatchNorm's (params
    ``scale``, ``bias``; batch_stats ``mean``, ``var``), so checkpoints are interchangeable.
    Rows with mask 0 must hold finite values (they are multiplied by 0).
    """

    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            weight = (jnp.ones(x.shape[0], jnp.float32) if mask is None
                      else (mask > 0).astype(jnp.float32))
            count = jnp.maximum(weight.sum(), 1.0) * math.prod(x.shape[1:-1])
            weight = weight.reshape((-1,) + (1,) * (x.ndim - 1))
            mean = jnp.sum(x * weight, axes) / count
            var = jnp.sum(jnp.square(x - mean) * weight, axes) / count
            if not self.is_initializing():
                unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
                m = self.momentum
                running_mean.value = m * running_mean.value + (1.0 - m) * mean
                running_var.value = m * running_var.value + (1.0 - m) * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


class ConvBlock(nn.Module):
    """Conv 5x5 (xavier_uniform, as PANNs) -> BatchNorm (scale 1, bias 0) -> ReLU -> avg pool."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        x = nn.Conv(self.features, (5, 5), strides=(1, 1), padding=2, use_bias=False,
                    kernel_init=nn.initializers.xavier_uniform(),
                    dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
        x = BatchNorm(dtype=self.dtype, name="bn")(x, train, mask)
        x = nn.relu(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class CNN6Encoder(nn.Module):
    """CNN6 feature extractor: ``x [B, mel, frames]`` -> ``[B, channels[-1]]`` float32.

    ``mask [B]`` (1 real, 0 padding) keeps padded rows out of the BatchNorm batch statistics in
    training mode; it has no effect in inference mode (``train=False``), which uses the running
    statistics. Rows with mask 0 still get (meaningless) outputs.
    """

    channels: Sequence[int] = DEFAULT_CHANNELS
    layout: str = "reference"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        channels = _check_channels(self.channels)
        layout = _check_layout(self.layout)
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"CNN6Encoder expects log-mel x of shape [batch, mel, frames], "
                             f"got shape {x.shape}")
        smallest = 2 ** len(channels)
        if x.shape[1] < smallest or x.shape[2] < smallest:
            raise ValueError(f"CNN6Encoder with {len(channels)} pooling blocks needs at least "
                             f"{smallest} mel bins and {smallest} frames, got shape {x.shape}")
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != (x.shape[0],):
                raise ValueError(f"mask must have shape [batch] = {(x.shape[0],)}, "
                                 f"got {mask.shape}")

        image = x[..., None]  # (B, freq, time, 1): H = freq, W = time
        if layout == "panns":
            image = jnp.swapaxes(image, 1, 2)  # (B, time, freq, 1)
        for i, features in enumerate(channels, start=1):
            image = ConvBlock(features, dtype=self.dtype, name=f"conv_block{i}")(
                image, train, mask)
        # Global pooling in float32: mean over W, then max + mean over H.
        image = image.astype(jnp.float32).mean(axis=2)
        return image.max(axis=1) + image.mean(axis=1)


def encoder(config) -> CNN6Encoder:
    """The encoder of a config (``model.channels``, ``model.layout``, ``model.dtype``)."""
    return CNN6Encoder(tuple(config.model.channels), config.model.layout,
                       jnp.dtype(config.model.dtype))


def pretrained(config, input_shape=None) -> dict[str, Any] | None:
    """The converted encoder of ``model.init_from`` (checked against model.channels), or None.
    CNN6 pools globally, so any input shape fits the same weights."""
    if not config.model.init_from:
        return None
    loaded, variables = load_pretrained(config.model.init_from)
    if tuple(loaded.channels) != tuple(config.model.channels):
        raise ValueError(f"{config.model.init_from} holds a CNN6 encoder with channels "
                         f"{tuple(loaded.channels)}, but config.model.channels is "
                         f"{tuple(config.model.channels)}")
    return variables


# ----------------------------------------------------------------------------------------------
# Converted encoders on disk.


def encoder_shapes(channels: Sequence[int] = DEFAULT_CHANNELS) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of ``jax.ShapeDtypeStruct`` for an encoder (no compute)."""
    channels = _check_channels(channels)
    side = 2 ** len(channels)
    x = jax.ShapeDtypeStruct((1, side, side), jnp.float32)
    return jax.eval_shape(
        lambda x: CNN6Encoder(channels).init(jax.random.key(0), x, train=False), x)


def save_encoder(directory: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Writes encoder ``variables`` ({'params', 'batch_stats'}) and ``meta`` atomically
    (`converted.write`).

    ``meta`` needs ``channels`` and may hold ``layout`` (default 'reference') and any
    JSON-serialisable provenance (e.g. ``source``). An existing non-empty ``directory`` is an
    error unless ``overwrite``.
    """
    channels = _check_channels(meta["channels"])
    layout = _check_layout(meta.get("layout", "reference"))
    variables = {k: variables[k] for k in variables}
    diffs = converted.differences(encoder_shapes(channels), variables)
    if diffs:
        raise ValueError(f"variables do not fit a CNN6 encoder with channels {channels}:\n  "
                         + "\n  ".join(diffs))
    record = {**meta, "architecture": "cnn6", "channels": list(channels), "layout": layout}
    return converted.write(directory, variables, record, overwrite=overwrite)


def encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``directory/encoder.json`` (channels, layout, provenance)."""
    meta = converted.read_meta(directory, "cnn6", "tools/convert_panns.py")
    try:
        meta["channels"] = _check_channels(meta.get("channels") or ())
        _check_layout(meta.get("layout"))
    except ValueError as e:
        raise ValueError(f"{Path(directory) / converted.META_FILE}: {e}") from e
    return meta


def load_pretrained(directory: str | os.PathLike, *, layout: str | None = None,
                    dtype: Any = jnp.float32) -> tuple[CNN6Encoder, dict[str, Any]]:
    """Reads an encoder written by :func:`save_encoder` / tools/convert_panns.py.

    Returns ``(encoder, {'params', 'batch_stats'})``; ``encoder.apply(variables, x,
    train=False)`` maps ``x [B, mel, frames]`` to ``[B, channels[-1]]``. ``layout`` overrides
    the stored orientation (the weights are the same in both).
    """
    meta = encoder_meta(directory)
    state_dir, restored = converted.read_state(directory)
    diffs = converted.differences(encoder_shapes(meta["channels"]), restored)
    if diffs:
        raise ValueError(f"{state_dir} does not fit a CNN6 encoder with channels "
                         f"{meta['channels']}:\n  " + "\n  ".join(diffs))
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), restored)
    encoder = CNN6Encoder(meta["channels"], layout or meta["layout"], dtype)
    _check_layout(encoder.layout)
    return encoder, variables
