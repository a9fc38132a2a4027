"""CLAP's text tower and its weights on disk (docs/method.md §14).

BTS (Interspeech 2024) writes each cycle's patient metadata as a sentence and reads it with
the text tower of LAION's CLAP (``laion/clap-htsat-unfused``): RoBERTa-base as transformers'
``ClapTextModel`` computes it, then CLAP's text projection. ``ClapTextEncoder`` maps token ids
``[batch, L]`` and their attention mask to ``text_embeds [batch, projection_dim]`` float32:

1. embeddings: word + position + token type (all type 0), a LayerNorm and dropout; RoBERTa's
   positions count the non-padding tokens from ``pad_token_id + 1``, padding sits at
   ``pad_token_id``;
2. ``num_hidden_layers`` post-LayerNorm layers: self-attention (padded keys masked, the
   softmax in float32, dropout on its weights), Linear + dropout + LayerNorm(x + .), an MLP
   with exact GELU, Linear + dropout + LayerNorm(x + .);
3. the pooler: Linear + tanh on the first token (``<s>``);
4. CLAP's projection Linear -> ReLU -> Linear (``text_projection``).

From scratch the parameters are drawn as transformers draws CLAP's (embeddings N(0, 0.02),
every Linear N(0, hidden^-1/2 (2 layers)^-1/2) with zero bias). ``scan`` runs the layers as
one ``lax.scan`` over their stacked parameters (one layer compiled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resp_jax.models import converted

OUTPUTS = ("projection", "pooled")  # ClapTextEncoder.output
# The architecture (encoder.json / model.text fields), in ClapTextConfig's names, with its
# defaults: RoBERTa-base and CLAP's 512-d projection.
ARCH_DEFAULTS = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
    "layer_norm_eps": 1e-12, "projection_dim": 512, "pad_token_id": 1,
}
ARCH_FIELDS = tuple(ARCH_DEFAULTS)
TOKENIZER_FILE = "tokenizer.json"  # beside encoder.json: the tokenizer the tower was trained with
_NEG = float(jnp.finfo(jnp.float32).min)


def _dense(features: int, std: float, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros,
                    name=name)


class TextLayer(nn.Module):
    """One post-LayerNorm RoBERTa layer; ``bias [B, 1, 1, L]`` masks the padded keys."""

    hidden_size: int
    heads: int
    intermediate_size: int
    layer_norm_eps: float
    init_std: float
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    def _norm(self, name):
        return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                            param_dtype=jnp.float32, use_fast_variance=False, name=name)

    @nn.compact
    def __call__(self, x, bias, train: bool):
        b, length, width = x.shape
        head = width // self.heads
        qkv = _dense(3 * width, self.init_std, self.dtype, "qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, length, 3, self.heads, head), 2, 0)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head ** -0.5
        weights = jax.nn.softmax(logits + bias, axis=-1)
        weights = nn.Dropout(self.attention_dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        out = _dense(width, self.init_std, self.dtype, "attn_out")(out.reshape(b, length, width))
        out = nn.Dropout(self.dropout, deterministic=not train)(out)
        x = self._norm("attn_norm")(out + x)
        h = nn.gelu(_dense(self.intermediate_size, self.init_std, self.dtype, "fc1")(x),
                    approximate=False)
        h = nn.Dropout(self.dropout, deterministic=not train)(
            _dense(width, self.init_std, self.dtype, "fc2")(h))
        return self._norm("out_norm")(h + x)


class ClapTextEncoder(nn.Module):
    """``(ids [B, L] int, mask [B, L], train) -> [B, projection_dim]`` float32 (module doc);
    ``output='pooled'``: the pooler's ``[B, hidden_size]``; ``outputs=True``: every stage."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    projection_dim: int = 512
    pad_token_id: int = 1
    output: str = "projection"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Any = jnp.float32
    scan: bool = True

    @property
    def width(self) -> int:
        return self.projection_dim if self.output == "projection" else self.hidden_size

    def check(self) -> None:
        problems = []
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"{self.num_attention_heads} heads")
        if not 0 <= self.pad_token_id < self.vocab_size:
            problems.append(f"pad_token_id {self.pad_token_id} is not a token of the "
                            f"{self.vocab_size}-token vocabulary")
        if min(self.num_hidden_layers, self.projection_dim, self.max_position_embeddings,
               self.type_vocab_size) < 1:
            problems.append("num_hidden_layers, projection_dim, max_position_embeddings and "
                            "type_vocab_size must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def init_std(self) -> float:
        """transformers' CLAP Linear init: hidden^-1/2 x (2 layers)^-1/2."""
        return self.hidden_size ** -0.5 * (2 * self.num_hidden_layers) ** -0.5

    @nn.compact
    def __call__(self, ids, mask, train: bool, outputs: bool = False):
        self.check()
        ids = jnp.asarray(ids, jnp.int32)
        mask = jnp.asarray(mask)
        longest = self.max_position_embeddings - self.pad_token_id - 1
        if ids.ndim != 2 or mask.shape != ids.shape or not 0 < ids.shape[1] <= longest:
            raise ValueError(f"ClapTextEncoder expects token ids and a mask [batch, L] with "
                             f"0 < L <= {longest}, got {ids.shape} and {mask.shape}")
        real = (ids != self.pad_token_id).astype(jnp.int32)
        positions = jnp.cumsum(real, axis=1) * real + self.pad_token_id

        def embed(n, name):
            return nn.Embed(n, self.hidden_size, embedding_init=nn.initializers.normal(0.02),
                            name=name)
        x = (embed(self.vocab_size, "word_embeddings")(ids)
             + embed(self.max_position_embeddings, "position_embeddings")(positions)
             + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False,
                         name="embeddings_norm")(x).astype(self.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, _NEG).astype(jnp.float32)
        x = self._layers(x, bias, train).astype(jnp.float32)
        pooled = jnp.tanh(_dense(self.hidden_size, self.init_std, jnp.float32, "pooler")(x[:, 0]))
        h = nn.relu(_dense(self.projection_dim, self.init_std, jnp.float32, "projection1")(pooled))
        projection = _dense(self.projection_dim, self.init_std, jnp.float32, "projection2")(h)
        result = {"last_hidden_state": x, "pooled": pooled, "projection": projection}
        return result if outputs else result[self.output]

    def _layer(self, **kw) -> TextLayer:
        return TextLayer(self.hidden_size, self.num_attention_heads, self.intermediate_size,
                         self.layer_norm_eps, self.init_std, self.dropout,
                         self.attention_dropout, self.dtype, **kw)

    def _layers(self, x, bias, train: bool):
        if self.is_initializing() or not self.scan or self.num_hidden_layers < 2:
            for i in range(self.num_hidden_layers):
                x = self._layer(name=f"layer{i}")(x, bias, train)
            return x
        params = self.variables["params"]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                               *[params[f"layer{i}"] for i in range(self.num_hidden_layers)])
        dropping = train and (self.dropout > 0 or self.attention_dropout > 0)
        keys = (jax.random.split(self.make_rng("dropout"), self.num_hidden_layers) if dropping
                else jnp.zeros(self.num_hidden_layers))
        layer = self._layer(parent=None)

        def body(x, inputs):
            p, key = inputs
            return layer.apply({"params": p}, x, bias, train,
                               rngs={"dropout": key} if dropping else {}), None
        return jax.lax.scan(body, x, (stacked, keys))[0]


# ----------------------------------------------------------------------------------------------
# Converted text towers on disk (tools/convert_clap.py writes them, beside the audio tower).


def encoder_shapes(encoder: ClapTextEncoder) -> dict[str, Any]:
    """``{'params'}`` of ``jax.ShapeDtypeStruct`` for ``encoder``."""
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(lambda i: encoder.init(jax.random.key(0), i, jnp.ones_like(i),
                                                 train=False), ids)


def _check_meta(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in ARCH_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    arch = {k: meta[k] for k in ARCH_FIELDS}
    try:
        ClapTextEncoder(**arch).check()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return {**meta, **arch}


def save_encoder(directory: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], tokenizer: str, *, overwrite: bool = False) -> Path:
    """Writes the tower's ``{'params'}``, ``meta`` (every `ARCH_FIELDS` entry; anything else
    JSON-serialisable as provenance) and ``tokenizer`` (a `tokenizers` JSON serialisation,
    `TOKENIZER_FILE`) atomically."""
    meta = _check_meta(meta, "meta")
    arch = {k: meta[k] for k in ARCH_FIELDS}
    converted.check_variables(encoder_shapes(ClapTextEncoder(**arch)), dict(variables),
                              f"variables do not fit a CLAP text tower {arch}")
    return converted.write(directory, variables, {**meta, "architecture": "clap_text"},
                           overwrite=overwrite,
                           extra=lambda tmp: (tmp / TOKENIZER_FILE).write_text(tokenizer))


def encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``directory/encoder.json``."""
    meta = converted.read_meta(directory, "clap_text", "tools/convert_clap.py")
    return _check_meta(meta, str(Path(directory) / converted.META_FILE))


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32,
                    **fields: Any) -> tuple[ClapTextEncoder, dict]:
    """Reads a tower written by :func:`save_encoder`: ``(encoder, {'params'})``. ``fields``:
    output, dropout, attention_dropout, scan."""
    allowed = {"output", "dropout", "attention_dropout", "scan"}
    if fields.keys() - allowed:
        raise TypeError(f"load_pretrained accepts only {sorted(allowed)} as extra fields, got "
                        f"{sorted(fields.keys() - allowed)}")
    meta = encoder_meta(directory)
    encoder = ClapTextEncoder(**{k: meta[k] for k in ARCH_FIELDS}, dtype=dtype, **fields)
    encoder.check()
    state_dir, restored = converted.read_state(directory)
    converted.check_variables(encoder_shapes(encoder), restored,
                              f"{state_dir} does not fit the CLAP text tower of "
                              f"{converted.META_FILE}")
    return encoder, {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                            dict(restored["params"]))}


def tokenizer_text(directory: str | os.PathLike) -> str:
    """The tokenizer (`tokenizers` JSON) a converted tower was trained with."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a converted CLAP text "
                                "tower (tools/convert_clap.py writes it)")
    return path.read_text()
