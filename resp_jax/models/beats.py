"""The BEATs encoder and its weights on disk (docs/method.md §10).

Why a third backbone: BEATs (Chen et al., ICML 2023; microsoft/unilm beats/), pretrained
self-supervised on AudioSet (iter3+, AS2M), is the encoder of Patient-Aware Feature Alignment
(PAFA, Interspeech 2025), the best official-split ICBHI result with public code.

``BEATsEncoder`` maps BEATs' Kaldi fbank ``x [batch, frames, 128]`` (``data.frontend='beats'``,
normalised) to pooled features ``[batch, width]`` float32, as the reference's
``extract_features`` (BEATs.py, backbone.py) computes its tokens:

1. a ``input_patch_size`` x ``input_patch_size`` convolution with the same stride on the
   (time, frequency) image, tokens flattened time-major (token ``t * F' + f``);
2. a LayerNorm over the patch embedding, then a Linear to the width when ``embed_dim`` differs;
3. a convolutional position embedding: grouped Conv1d (kernel ``conv_pos``, ``conv_pos_groups``
   groups, weight normalisation over the kernel axis), the last output dropped for an even
   kernel, GELU, added to the tokens; then a LayerNorm (post-LN models);
4. ``depth`` post-LayerNorm Transformer layers with deep-norm residuals (x * (2 depth)^(1/4) +
   f(x) when ``deep_norm``) and a bucketed relative position bias shared by all layers, gated
   per query by ``grep_linear`` / ``grep_a`` when ``gru_rel_pos``;
5. pooled output: the mean of the tokens (PAFA's classifier averages per-token logits, which
   for a linear classifier is the classifier of the mean; models/beats.py of PAFA).

From scratch the parameters are drawn as the reference initialises them (BEATs.py:82-90,
backbone.py:33-45,87-97,370-390,751-783): the patch embedding and ``post_extract_proj`` keep
PyTorch's default init (uniform, 1/sqrt(fan_in) bounds, bias included), every Linear inside
the encoder N(0, 0.02) with zero bias (``init_bert_params``), then with deep norm the q/k
projections xavier-normal with gain 1 and v / out / fc1 / fc2 with gain (8 depth)^(-1/4); the
relative position table N(0, 0.02), ``grep_a`` 1, LayerNorms 1 / 0; the position convolution
v ~ N(0, 4 / (conv_pos width)), its weight-norm gain g = the norm of v, bias 0.

With ``tokens=True`` the call returns ``(pooled, tokens [batch, L, width])`` (PAFA's projector
pools the tokens with attention). Variables are ``{'params'}`` only. Dropouts, LayerDrop and the
layer-wise gradient scaling act only when ``train=True`` and draw from the ``'dropout'`` rng.
The reference's padding mask is not needed: every clip has the same length.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resp_jax.models import converted
from resp_jax.models.beats_layers import (Layer, PositionConv, bert_init, grad_multiply,
                                          relative_position_buckets, torch_default_bias_init,
                                          torch_default_init)

# The fields of the checkpoint's cfg the encoder reads (BEATsConfig names), with resp_jax's
# from-scratch values (docs/method.md §10: 16 x 16 patches, a 512-wide patch embedding, conv
# position embedding 128 / 16, gated relative position bias, deep norm; the reference class's
# own defaults for the bucket sizes; no regularisation). The width, depth and heads are
# model.width / depth / heads (cfg encoder_embed_dim / encoder_layers / encoder_attention_heads).
ARCH_DEFAULTS = {
    "input_patch_size": 16, "embed_dim": 512, "conv_bias": False,
    "encoder_ffn_embed_dim": None,  # None: 4 x width
    "activation_fn": "gelu", "layer_norm_first": False, "deep_norm": True,
    "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True,
    "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": True,
}
REGULARISATION_DEFAULTS = {
    "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "layer_wise_gradient_decay_ratio": 1.0,
}
CFG_FIELDS = tuple(ARCH_DEFAULTS) + tuple(REGULARISATION_DEFAULTS)
SIZE_FIELDS = {"width": "encoder_embed_dim", "depth": "encoder_layers",
               "heads": "encoder_attention_heads"}
INPUTS = ("frames_bins", "bins_frames")  # BEATsEncoder.input
TOKENS = True  # the encoder can return its tokens (models.heads.Model(proj_pool='attention'))


class BEATsEncoder(nn.Module):
    """BEATs feature extractor: ``x [B, frames, bins]`` -> ``[B, width]`` float32 (module doc).

    Fields are the checkpoint cfg's (`CFG_FIELDS`) plus width / depth / heads; any number of
    frames and bins of at least one patch works (no absolute position embedding). ``mask`` [B]
    is accepted for the common encoder interface and ignored (no batch statistics).
    """

    width: int = 768
    depth: int = 12
    heads: int = 12
    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_ffn_embed_dim: int | None = None
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    layer_wise_gradient_decay_ratio: float = 1.0
    dtype: Any = jnp.float32
    input: str = "frames_bins"  # x's layout: 'frames_bins' (BEATs') | 'bins_frames' (pipeline)

    def check(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.layer_norm_first or self.activation_fn != "gelu":
            raise ValueError("resp_jax's BEATs implements post-LayerNorm layers with GELU (the "
                             f"published models); got layer_norm_first={self.layer_norm_first},"
                             f" activation_fn={self.activation_fn!r}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None,
                 tokens: bool = False):
        del mask  # no batch statistics in a Transformer
        self.check()
        x = jnp.asarray(x)
        p = self.input_patch_size
        if x.ndim != 3 or min(x.shape[1:]) < p:
            raise ValueError(f"BEATsEncoder expects fbank x [batch, {self.input}] with at least "
                             f"{p} frames and bins, got shape {x.shape}")
        image = (jnp.swapaxes(x, 1, 2) if self.input == "bins_frames" else x)[..., None]
        patches = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                          use_bias=self.conv_bias, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=torch_default_init, name="patch_embedding")(
                              image.astype(self.dtype))
        batch, t, f, _ = patches.shape
        h = patches.reshape(batch, t * f, self.embed_dim)  # time-major, as torch's flatten
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                         use_fast_variance=False, name="layer_norm")(h)
        if self.embed_dim != self.width:
            h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=torch_default_init,
                         bias_init=torch_default_bias_init(self.embed_dim),
                         name="post_extract_proj")(h)
        h = nn.Dropout(self.dropout_input, deterministic=not train)(h)
        h = h + PositionConv(self.conv_pos, self.conv_pos_groups, self.dtype, name="pos_conv")(h)
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                         use_fast_variance=False, name="encoder_layer_norm")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        bias = None
        if self.relative_position_embedding:
            table = self.param("relative_attention_bias", bert_init,
                               (self.num_buckets, self.heads))
            buckets = relative_position_buckets(h.shape[1], self.num_buckets, self.max_distance)
            bias = jnp.transpose(table[buckets], (2, 0, 1)).astype(jnp.float32)  # [H, L, L]
        deep = self.deep_norm and self.depth > 0
        alpha = (2 * self.depth) ** 0.25 if deep else 1.0
        beta = (8 * self.depth) ** -0.25 if deep else 1.0
        ffn = self.encoder_ffn_embed_dim or 4 * self.width
        for i in range(self.depth):
            if train and self.layer_wise_gradient_decay_ratio != 1.0:
                h = grad_multiply(h, float(self.layer_wise_gradient_decay_ratio))
            out = Layer(self.width, self.heads, ffn, self.gru_rel_pos, alpha, beta,
                        self.dropout, self.attention_dropout, self.activation_dropout,
                        self.dtype, name=f"layer{i}")(h, bias, train)
            if train and self.encoder_layerdrop > 0:  # one draw per layer and batch
                keep = jax.random.uniform(self.make_rng("dropout")) > self.encoder_layerdrop
                out = jnp.where(keep, out, h)
            h = out
        h = h.astype(jnp.float32)
        pooled = h.mean(axis=1)
        return (pooled, h) if tokens else pooled


# ----------------------------------------------------------------------------------------------
# The backbone hooks (resp_jax.models.BACKBONES).

AST_ONLY = ("dropout", "attention_dropout", "drop_path")  # model.* fields BEATs does not read


def resolve(config) -> None:
    """Fills the BEATs placeholders when a run starts (`resp_jax.configuration.resolve`):
    every ``model.beats.<cfg field>`` left None takes the converted checkpoint's value
    (init_from: its cfg, as PAFA builds BEATsConfig from it) or `ARCH_DEFAULTS` /
    `REGULARISATION_DEFAULTS` from scratch (``encoder_ffn_embed_dim``: 4 x width);
    ``model.proj_hidden`` / ``proj_out`` None = ``model.width`` (PAFA's projector)."""
    m = config.model
    if "beats" not in m:
        raise ValueError("model.name='beats' reads the model.beats fields of configs/base.py "
                         "beats_recipe (configs/beats_*.py start from it)")
    set_ast = [f"model.{k}={m[k]!r}" for k in AST_ONLY if m.get(k)]
    if set_ast:
        raise ValueError(f"{', '.join(set_ast)}: BEATs reads its regularisation from "
                         "model.beats (dropout, attention_dropout, activation_dropout, "
                         "encoder_layerdrop, dropout_input)")
    for field in ("proj_hidden", "proj_out"):
        if m[field] is None:
            m[field] = int(m.width)
    source = encoder_meta(m.init_from) if m.init_from else {
        **ARCH_DEFAULTS, **REGULARISATION_DEFAULTS, "encoder_ffn_embed_dim": 4 * int(m.width)}
    for field in CFG_FIELDS:
        if m.beats[field] is None:
            default = {**ARCH_DEFAULTS, **REGULARISATION_DEFAULTS}[field]
            m.beats[field] = (int if default is None else type(default))(source[field])


def _fields(config) -> dict[str, Any]:
    m = config.model
    beats = {k: v for k, v in m.get("beats", {}).items() if v is not None}
    fields = {**ARCH_DEFAULTS, **REGULARISATION_DEFAULTS, **beats}
    return {"width": int(m.width), "depth": int(m.depth), "heads": int(m.heads), **fields}


def encoder(config) -> BEATsEncoder:
    """The encoder of a config (``model.width/depth/heads/dtype`` and ``model.beats``) for the
    pipeline's ``[batch, bins, frames]`` inputs."""
    return BEATsEncoder(**_fields(config), dtype=jnp.dtype(config.model.dtype),
                        input="bins_frames")


def pretrained(config, input_shape) -> dict[str, Any] | None:
    """The converted encoder of ``model.init_from``, its architecture checked against the
    config; None without init_from. ``input_shape`` is unused (no absolute positions)."""
    del input_shape
    if not config.model.init_from:
        return None
    loaded, variables = load_pretrained(config.model.init_from)
    want = encoder(config)
    diffs = [f"{k} {getattr(loaded, k)!r} (config: {getattr(want, k)!r})"
             for k in ("width", "depth", "heads", *ARCH_DEFAULTS)
             if getattr(loaded, k) != getattr(want, k)]
    if diffs:
        raise ValueError(f"{config.model.init_from} holds a BEATs encoder that does not match "
                         f"config.model: {'; '.join(diffs)}")
    return variables


# ----------------------------------------------------------------------------------------------
# Converted encoders on disk (`resp_jax.models.converted`; tools/convert_beats.py writes them).


def encoder_shapes(encoder: BEATsEncoder) -> dict[str, Any]:
    """``{'params'}`` of ``jax.ShapeDtypeStruct`` for ``encoder`` (no compute)."""
    p = encoder.input_patch_size
    x = jax.ShapeDtypeStruct((1, 2 * p, p), jnp.float32)
    probe = encoder.clone(input="frames_bins")
    return jax.eval_shape(lambda x: probe.init(jax.random.key(0), x, train=False), x)


def _check_meta(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in ("width", "depth", "heads", *CFG_FIELDS) if k not in meta]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    fields = {k: meta[k] for k in ("width", "depth", "heads", *CFG_FIELDS)}
    try:
        BEATsEncoder(**fields).check()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return dict(meta)


def save_encoder(directory: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Writes encoder ``variables`` ({'params'}) and ``meta`` (width, depth, heads, every
    `CFG_FIELDS` entry, anything else JSON-serialisable as provenance, e.g. the checkpoint's
    whole ``cfg``) atomically: nothing is left behind on failure."""
    meta = _check_meta(meta, "meta")
    variables = {k: variables[k] for k in variables}
    fields = {k: meta[k] for k in ("width", "depth", "heads", *CFG_FIELDS)}
    converted.check_variables(encoder_shapes(BEATsEncoder(**fields)), variables,
                              f"variables do not fit a BEATs encoder of width {meta['width']}, "
                              f"depth {meta['depth']}")
    return converted.write(directory, variables, {**meta, "architecture": "beats"},
                           overwrite=overwrite)


def encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``directory/encoder.json``."""
    meta = converted.read_meta(directory, "beats", "tools/convert_beats.py")
    return _check_meta(meta, str(Path(directory) / converted.META_FILE))


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32,
                    input: str = "frames_bins", **fields: Any) -> tuple[BEATsEncoder, dict]:
    """Reads an encoder written by :func:`save_encoder` / tools/convert_beats.py.

    Returns ``(encoder, {'params'})``; ``encoder.apply(variables, x, train=False)`` maps BEATs'
    normalised fbank ``x [B, frames, 128]`` (``input='bins_frames'``: [B, 128, frames]) to
    ``[B, width]``. ``fields`` overrides the regularisation (`REGULARISATION_DEFAULTS` names;
    default: the checkpoint cfg's).
    """
    if fields.keys() - REGULARISATION_DEFAULTS.keys():
        raise TypeError(f"load_pretrained accepts only {sorted(REGULARISATION_DEFAULTS)} as "
                        f"extra fields, got {sorted(fields.keys() - REGULARISATION_DEFAULTS)}")
    meta = encoder_meta(directory)
    arch = {k: meta[k] for k in ("width", "depth", "heads", *CFG_FIELDS)}
    encoder = BEATsEncoder(**{**arch, **fields}, dtype=dtype, input=input)
    state_dir, restored = converted.read_state(directory)
    converted.check_variables(encoder_shapes(encoder), restored,
                              f"{state_dir} does not fit a BEATs encoder of width "
                              f"{meta['width']}, depth {meta['depth']}")
    variables = {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                        dict(restored["params"]))}
    return encoder, variables
