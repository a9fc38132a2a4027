"""The Audio Spectrogram Transformer (AST) encoder and its weights on disk (docs/method.md §9).

Why a second backbone: AST (Gong, Chung and Glass, Interspeech 2021; YuanGongND/ast) pretrained
on ImageNet and AudioSet is the encoder of Patch-Mix CL (Bae et al., Interspeech 2023), the
strongest published ICBHI result we compare with.

``ASTEncoder`` maps Kaldi fbank features ``x [batch, frames, bins]`` (``resp_jax.data.features.
kaldi_fbank`` then ``normalise_fbank``) to pooled features ``[batch, width]`` float32:

1. the input is transposed to a one-channel (frequency, time) image, as AST does;
2. a 16 x 16 convolution with strides (fstride, tstride) cuts it into a grid of
   ``f_dim x t_dim`` overlapping patches (12 x 101 for 128 bins x 1024 frames, 12 x 79 for 798
   frames), flattened frequency-major (patch ``f * t_dim + t``) like PyTorch's ``flatten(2)``;
3. optionally Patch-Mix (``resp_jax.patchmix``) replaces some patch embeddings by another
   example's, before the position embedding is added (the authors' models/ast.py order; since a
   mixed patch keeps its position, adding the embedding before or after gives the same tokens);
4. a class and a distillation token are prepended, learned position embeddings added;
5. ``depth`` pre-LayerNorm Transformer blocks (multi-head self-attention with a fused ``qkv``
   projection as in timm's DeiT, then a 4x MLP with exact GELU; `resp_jax.models.transformer`,
   which also chooses the attention kernel and what is recomputed in the backward pass);
6. a final LayerNorm; the output is the mean of the two token outputs, as AST's forward and
   Hugging Face's ``ASTModel.pooler_output`` (``pool='cls'``), or with ``pool='mean'`` the mean
   of every token's output (class, distillation and patch tokens; not AST's: for tiny models
   trained from scratch, whose class tokens start by seeing only an average of the patches).

The classification head (AST's ``mlp_head``: LayerNorm + Linear) is not part of the encoder.

Variables are ``{'params'}`` only: AST has no BatchNorm, so there is no ``batch_stats``
collection (code written for CNN6, which has one, must not assume it). Dropout and stochastic
depth draw from the ``'dropout'`` rng, and only when ``train=True`` and their rate is > 0 (the
Patch-Mix recipe uses 0 everywhere, as timm's DeiT-base does by default).

Converted encoders live in a directory holding ``encoder.json`` (architecture, sizes, the
source patch grid, provenance) and ``state/`` (an orbax checkpoint of ``{'params'}`` with the
position embedding at the source grid); tools/convert_ast.py writes one with
:func:`save_encoder` and :func:`load_pretrained` reads it, adapting the position embedding to
the run's clip length as AST's ast_models.py does (:func:`adapt_position_embedding`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resp_jax.models import converted
from resp_jax.models.transformer import (ATTENTION, REMAT, Attention, Block,  # noqa: F401
                                         DropPath, _trunc_normal, remat_choice, run_blocks)
from resp_jax.models.positions import (LAYOUTS, _resize_linear,  # noqa: F401
                                      adapt_position_embedding, fit_position_embedding)

ENCODER_FORMAT, META_FILE, STATE_DIR = (converted.ENCODER_FORMAT, converted.META_FILE,
                                        converted.STATE_DIR)
# encoder.json fields that define the architecture (the rest is provenance).
ARCH_FIELDS = ("width", "depth", "heads", "mlp_ratio", "patch", "fstride", "tstride",
               "layer_norm_eps", "grid", "num_bins", "frames")
INPUTS = ("frames_bins", "bins_frames")  # ASTEncoder.input
POOLS = ("cls", "mean")  # ASTEncoder.pool


def patch_grid(num_bins: int, frames: int, patch: int = 16, fstride: int = 10,
               tstride: int = 10) -> tuple[int, int]:
    """(f_dim, t_dim) of the patch grid: 128 bins x 1024 frames -> (12, 101); 798 -> (12, 79)."""
    if num_bins < patch or frames < patch:
        raise ValueError(f"an AST with {patch} x {patch} patches needs at least {patch} bins and "
                         f"{patch} frames, got {num_bins} bins and {frames} frames")
    return (num_bins - patch) // fstride + 1, (frames - patch) // tstride + 1


class ASTEncoder(nn.Module):
    """AST feature extractor: ``x [B, frames, bins]`` -> ``[B, width]`` float32 (see module doc).

    ``frames`` and ``num_bins`` fix the patch grid and so the position embedding's shape.
    ``mask`` [B] is accepted for a common encoder interface and ignored (no batch statistics).
    ``patch_mix``: a ``resp_jax.patchmix.PatchMixPlan`` (or any object with ``index`` [B] and
    ``patches`` [f_dim * t_dim] bool): row ``i``'s patch ``p`` is replaced by row
    ``index[i]``'s where ``patches[p]``; class and distillation tokens are untouched.
    Stochastic depth rates rise linearly from 0 to ``drop_path`` over the blocks (timm).
    ``attention``, ``remat``: `resp_jax.models.transformer`; ``scan`` runs the blocks as one
    loop (`transformer.run_blocks`; they are unrolled when initialising and with drop_path).
    """

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4
    patch: int = 16
    fstride: int = 10
    tstride: int = 10
    num_bins: int = 128
    frames: int = 1024
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    input: str = "frames_bins"  # x's layout: 'frames_bins' (AST's) | 'bins_frames' (pipeline)
    attention: str = "auto"     # transformer.ATTENTION
    remat: str = "auto"         # transformer.REMAT
    scan: bool = True
    pool: str = "cls"           # POOLS: 'cls' (AST's) | 'mean' (every token's output)

    @property
    def grid(self) -> tuple[int, int]:
        """(f_dim, t_dim): the patch grid of this encoder's input size."""
        return patch_grid(self.num_bins, self.frames, self.patch, self.fstride, self.tstride)

    @property
    def mlp_dim(self) -> int:
        return int(round(self.width * self.mlp_ratio))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None,
                 patch_mix: Any = None) -> jax.Array:
        del mask  # no batch statistics in a Transformer
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        x = jnp.asarray(x)
        shape = ((self.frames, self.num_bins) if self.input == "frames_bins"
                 else (self.num_bins, self.frames))
        if x.ndim != 3 or x.shape[1:] != shape:
            raise ValueError(f"ASTEncoder expects fbank x of shape [batch, {self.input}] = "
                             f"[batch, {shape[0]}, {shape[1]}], got shape {x.shape}")
        f_dim, t_dim = self.grid
        batch = x.shape[0]

        image = x if self.input == "bins_frames" else jnp.swapaxes(x, 1, 2)
        image = image[..., None].astype(self.dtype)  # (B, freq, time, 1)
        patches = nn.Conv(self.width, (self.patch, self.patch),
                          strides=(self.fstride, self.tstride), padding="VALID",
                          dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(image)
        patches = patches.reshape(batch, f_dim * t_dim, self.width)  # frequency-major
        if patch_mix is not None:
            patches = apply_patch_mix(patches, patch_mix.index, patch_mix.patches)

        cls = self.param("cls_token", _trunc_normal, (1, 1, self.width), jnp.float32)
        dist = self.param("dist_token", _trunc_normal, (1, 1, self.width), jnp.float32)
        pos = self.param("pos_embed", _trunc_normal, (1, 2 + f_dim * t_dim, self.width),
                         jnp.float32)
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)).astype(self.dtype),
                                  jnp.broadcast_to(dist, (batch, 1, self.width)).astype(self.dtype),
                                  patches], axis=1)
        tokens = tokens + pos.astype(self.dtype)
        tokens = nn.Dropout(self.dropout, deterministic=not train)(tokens)
        tokens = self._blocks(tokens, train)
        tokens = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=jnp.float32,
                              param_dtype=jnp.float32, use_fast_variance=False,
                              name="norm")(tokens if self.pool == "mean" else tokens[:, :2])
        return tokens.mean(axis=1)

    def _blocks(self, tokens: jax.Array, train: bool) -> jax.Array:
        remat = remat_choice(self.remat)

        def block(i, cls=Block, **kw):
            return cls(self.width, self.heads, self.mlp_dim, self.dropout,
                       self.attention_dropout, self.drop_path * i / max(self.depth - 1, 1),
                       self.layer_norm_eps, self.dtype, self.attention, remat, **kw)
        if self.is_initializing() or not self.scan or self.drop_path > 0:
            cls = nn.remat(Block, static_argnums=(2,)) if remat == "block" else Block
            for i in range(self.depth):
                tokens = block(i, cls, name=f"block{i}")(tokens, train)
            return tokens
        dropping = train and (self.dropout > 0 or self.attention_dropout > 0)
        params = [self.variables["params"][f"block{i}"] for i in range(self.depth)]
        return run_blocks(block(0, parent=None), params, tokens, train,
                          self.make_rng("dropout") if dropping else None)


# ----------------------------------------------------------------------------------------------
# The backbone hooks (resp_jax.models.BACKBONES).

DEFAULT_LAYER_NORM_EPS = 1e-6  # timm's DeiT (the original release); the hub's copy has 1e-12
CHECKED = ("width", "depth", "heads", "mlp_ratio", "patch", "fstride", "tstride",
           "layer_norm_eps")  # what a converted encoder must share with the config


def resolve(config) -> None:
    """Fills the AST placeholders when a run starts (`resp_jax.configuration.resolve`):
    ``model.layer_norm_eps`` None = the converted encoder's (init_from), else timm's 1e-6;
    ``model.proj_hidden`` / ``proj_out`` None = ``model.width`` (Patch-Mix's projector);
    ``model.pos_embed``, ``model.attention`` and ``model.remat`` are checked."""
    for field, allowed in (("pos_embed", tuple(LAYOUTS)), ("attention", ATTENTION),
                           ("remat", REMAT), ("pool", POOLS)):
        if field in config.model and config.model[field] not in allowed:
            raise ValueError(f"config.model.{field} must be one of {allowed}, got "
                             f"{config.model[field]!r}")
    for field in ("proj_hidden", "proj_out"):
        if config.model[field] is None:
            config.model[field] = int(config.model.width)
    if config.model.layer_norm_eps is None:
        config.model.layer_norm_eps = float(
            encoder_meta(config.model.init_from)["layer_norm_eps"] if config.model.init_from
            else DEFAULT_LAYER_NORM_EPS)


def encoder(config) -> ASTEncoder:
    """The encoder of a config (``model.width/depth/heads/dropout/attention_dropout/drop_path/
    layer_norm_eps/dtype/attention/remat``) for the pipeline's ``[batch, bins, frames]`` inputs of
    ``data.frontend`` and ``data.duration``."""
    from resp_jax.data import features

    m = config.model
    bins, frames = features.input_shape(config)
    eps = DEFAULT_LAYER_NORM_EPS if m.layer_norm_eps is None else float(m.layer_norm_eps)
    return ASTEncoder(width=int(m.width), depth=int(m.depth), heads=int(m.heads),
                      num_bins=bins, frames=frames, fstride=int(m.get("fstride", 10)),
                      tstride=int(m.get("tstride", 10)), pool=m.get("pool", "cls"),
                      dropout=float(m.dropout),
                      attention_dropout=float(m.attention_dropout),
                      drop_path=float(m.drop_path), layer_norm_eps=eps,
                      dtype=jnp.dtype(m.dtype), input="bins_frames",
                      attention=m.get("attention", "auto"), remat=m.get("remat", "auto"))


def pretrained(config, input_shape) -> dict[str, Any] | None:
    """The converted encoder of ``model.init_from`` with its position embedding adapted to
    ``input_shape`` (bins, frames), checked against the config; None without init_from."""
    if not config.model.init_from:
        return None
    bins, frames = (int(d) for d in input_shape)
    loaded, variables = load_pretrained(config.model.init_from, frames=frames, num_bins=bins,
                                        pos_embed=config.model.get("pos_embed", "ast"))
    want = encoder(config)
    diffs = [f"{k} {getattr(loaded, k)!r} (config: {getattr(want, k)!r})" for k in CHECKED
             if getattr(loaded, k) != getattr(want, k)]
    if diffs:
        raise ValueError(f"{config.model.init_from} holds an AST encoder that does not match "
                         f"config.model: {'; '.join(diffs)}")
    return variables


def apply_patch_mix(patches: jax.Array, index: jax.Array, mixed: jax.Array) -> jax.Array:
    """``patches [B, P, D]`` with patch ``p`` of row ``i`` taken from row ``index[i]`` where
    ``mixed[p]`` (the authors' ``image[:, mask] = image[index][:, mask]``)."""
    index = jnp.asarray(index)
    mixed = jnp.asarray(mixed)
    if index.shape != patches.shape[:1] or mixed.shape != patches.shape[1:2]:
        raise ValueError(f"patch_mix needs index [batch] = [{patches.shape[0]}] and patches "
                         f"[num_patches] = [{patches.shape[1]}], got {index.shape} and "
                         f"{mixed.shape}")
    return jnp.where(mixed[None, :, None], patches[index], patches)


# ----------------------------------------------------------------------------------------------
# Converted encoders on disk.


def _encoder_from_meta(meta: Mapping[str, Any], **overrides: Any) -> ASTEncoder:
    fields = {k: meta[k] for k in ("width", "depth", "heads", "mlp_ratio", "patch", "fstride",
                                   "tstride", "layer_norm_eps", "num_bins", "frames")}
    fields.update(overrides)
    return ASTEncoder(**fields)


def encoder_shapes(encoder: ASTEncoder) -> dict[str, Any]:
    """``{'params'}`` of ``jax.ShapeDtypeStruct`` for ``encoder`` (no compute)."""
    x = jax.ShapeDtypeStruct((1, encoder.frames, encoder.num_bins), jnp.float32)
    return jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), x)


def _check_meta(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The architecture fields of ``meta``, checked and normalised (grid from bins/frames)."""
    missing = [k for k in ARCH_FIELDS if k not in meta and k != "grid"]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    out = dict(meta)
    try:
        for k in ("width", "depth", "heads", "patch", "fstride", "tstride", "num_bins", "frames"):
            if isinstance(out[k], bool) or int(out[k]) != out[k] or int(out[k]) <= 0:
                raise ValueError(f"{k} must be a positive int, got {out[k]!r}")
            out[k] = int(out[k])
        out["mlp_ratio"] = float(out["mlp_ratio"])
        out["layer_norm_eps"] = float(out["layer_norm_eps"])
        if out["width"] % out["heads"]:
            raise ValueError(f"width {out['width']} is not divisible by heads {out['heads']}")
        grid = list(patch_grid(out["num_bins"], out["frames"], out["patch"], out["fstride"],
                               out["tstride"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    if "grid" in meta and list(meta["grid"]) != grid:
        raise ValueError(f"{where}: grid {meta['grid']} does not match {out['num_bins']} bins x "
                         f"{out['frames']} frames (expected {grid})")
    out["grid"] = grid
    return out


def save_encoder(directory: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Writes encoder ``variables`` ({'params'}) and ``meta`` atomically.

    ``meta`` needs the architecture: ``width, depth, heads, mlp_ratio, patch, fstride, tstride,
    layer_norm_eps`` and the source input size ``num_bins, frames`` (whose patch grid the
    position embedding is laid out on; it is stored as ``grid``); anything else
    JSON-serialisable is kept as provenance (e.g. ``source``). Everything is written to a
    temporary directory beside ``directory`` and renamed into place, so a failure leaves
    nothing behind. An existing non-empty ``directory`` is an error unless ``overwrite``.
    """
    meta = _check_meta(meta, "meta")
    variables = {k: variables[k] for k in variables}
    diffs = converted.differences(encoder_shapes(_encoder_from_meta(meta)), variables)
    if diffs:
        raise ValueError(f"variables do not fit an AST encoder of width {meta['width']}, depth "
                         f"{meta['depth']}, grid {meta['grid']}:\n  " + "\n  ".join(diffs))
    return converted.write(directory, variables, {**meta, "architecture": "ast"},
                           overwrite=overwrite)


def encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``directory/encoder.json`` (architecture, grid, provenance)."""
    meta = converted.read_meta(directory, "ast", "tools/convert_ast.py")
    return _check_meta(meta, str(Path(directory) / converted.META_FILE))


def load_pretrained(directory: str | os.PathLike, *, frames: int | None = None,
                    num_bins: int | None = None, dtype: Any = jnp.float32,
                    pos_embed: str = "ast", **fields: Any) -> tuple[ASTEncoder, dict[str, Any]]:
    """Reads an encoder written by :func:`save_encoder` / tools/convert_ast.py.

    Returns ``(encoder, {'params'})`` for inputs of ``frames`` x ``num_bins`` (default: the
    source size, e.g. 1024 x 128); the position embedding is adapted with
    :func:`adapt_position_embedding` (``pos_embed='ast'``) or laid out as the Patch-Mix code
    does (``'patchmix_code'``, `positions.patchmix_code_position_embedding`).
    ``encoder.apply(variables, x, train=False)`` maps ``x [B, frames, num_bins]`` to
    ``[B, width]``. ``fields`` sets the regularisation and speed fields (``dropout``,
    ``attention_dropout``, ``drop_path``, ``attention``, ``remat``); there is no
    ``batch_stats``.
    """
    allowed = {"dropout", "attention_dropout", "drop_path", "attention", "remat"}
    if fields.keys() - allowed:
        raise TypeError(f"load_pretrained accepts only {sorted(allowed)} as extra fields, got "
                        f"{sorted(fields.keys() - allowed)}")
    meta = encoder_meta(directory)
    state_dir, restored = converted.read_state(directory)
    diffs = converted.differences(encoder_shapes(_encoder_from_meta(meta)), restored)
    if diffs:
        raise ValueError(f"{state_dir} does not fit an AST encoder of width {meta['width']}, "
                         f"depth {meta['depth']}, grid {meta['grid']}:\n  " + "\n  ".join(diffs))
    encoder = _encoder_from_meta(meta, frames=int(frames or meta["frames"]),
                                 num_bins=int(num_bins or meta["num_bins"]), dtype=dtype, **fields)
    params = dict(restored["params"])
    params["pos_embed"] = fit_position_embedding(np.asarray(params["pos_embed"]),
                                                 tuple(meta["grid"]), encoder.grid, pos_embed)
    variables = {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)}
    return encoder, variables
