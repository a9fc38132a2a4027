"""The pre-LayerNorm Transformer blocks of the AST encoder (timm's DeiT; docs/method.md §9), and
how they run: which attention kernel, whether activations are recomputed, one loop over blocks.

``Block`` is x + attn(norm1(x)), then x + mlp(norm2(x)): multi-head self-attention with a fused
``qkv`` projection (output laid out [3, heads, head_dim], as timm's), a 4x MLP with exact GELU.
Its parameters are those of the converted checkpoints (``norm1, attn/{qkv,proj}, norm2, fc1,
fc2``).

Speed and memory (docs/benchmarks.md), none of which changes the numbers beyond float rounding:

- ``attention`` (`ATTENTION`): 'auto' runs cuDNN's fused flash attention
  (``jax.nn.dot_product_attention(implementation='cudnn')``) on a GPU when the compute dtype is
  bfloat16 or float16 and the head width is a multiple of 8 up to 128 (and no attention dropout
  is training), and the XLA formulation otherwise; 'xla' and 'cudnn' force one. The XLA
  formulation multiplies the unnormalised exponentials by v and divides the result by the row
  sums (a [T, head_dim] division instead of a [T, T] one; softmax statistics in float32).
- ``remat`` (`REMAT`): 'none' keeps every activation for the backward pass; 'attention'
  recomputes the attention weights (the [batch, heads, T, T] arrays: the largest activations
  of AST, 8 x 12 x 950 x 950 floats per block at the recipe's size) in the backward pass;
  'block' recomputes the whole block, keeping only its input (jax.checkpoint); 'auto' is
  'block' on a CPU, where it was the fastest (memory traffic, not arithmetic, limits the
  step there), and 'none' on accelerators, where recomputing costs a third more FLOPs.
- `run_blocks` applies the blocks as one ``lax.scan`` over their stacked parameters, so XLA
  compiles one block instead of ``depth`` and cannot fuse the backward pass of one block into
  another's: on CPU it otherwise fused each block's residual gradient into the transposes of
  every earlier block, recomputing the chain once per block. The parameters stay
  ``block0 .. block{depth-1}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION = ("auto", "xla", "cudnn")
REMAT = ("auto", "none", "attention", "block")

_trunc_normal = nn.initializers.truncated_normal(stddev=0.02)  # timm's ViT init


def attention_kernel(choice: str, dtype: Any, head_dim: int, dropout: bool) -> str:
    """'xla' or 'cudnn' for ``choice`` (`ATTENTION`) on this platform (see module doc)."""
    if choice not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {choice!r}")
    if choice != "auto":
        return choice
    fits = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128)
    return "cudnn" if fits and not dropout else "xla"


def remat_choice(choice: str) -> str:
    """'none', 'attention' or 'block' for ``choice`` (`REMAT`) on this platform."""
    if choice not in REMAT:
        raise ValueError(f"remat must be one of {REMAT}, got {choice!r}")
    if choice != "auto":
        return choice
    return "block" if jax.default_backend() == "cpu" else "none"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, kernel: str, dropout: float = 0.0,
           key: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v for ``q, k, v [B, T, heads, head_dim]``, in their
    dtype, as ``[B, T, heads, head_dim]``; ``dropout`` on the weights when ``key`` is given."""
    scale = q.shape[-1] ** -0.5
    if kernel == "cudnn":
        if key is not None and dropout > 0:
            raise ValueError("the cuDNN attention kernel has no attention dropout here; use "
                             "model.attention='xla'")
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
    logits = logits.astype(jnp.float32)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    total = weights.sum(axis=-1)  # [B, heads, T]
    if key is not None and dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - dropout, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout), 0.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(q.dtype), v)
    return (out / jnp.swapaxes(total, 1, 2)[..., None].astype(out.dtype)).astype(q.dtype)


class DropPath(nn.Module):
    """Stochastic depth: drops a block's residual branch per example, scaling kept ones."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(kept, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
    """Multi-head self-attention, fused qkv (output laid out as [3, heads, head_dim])."""

    width: int
    heads: int
    attention_dropout: float = 0.0
    dropout: float = 0.0
    dtype: Any = jnp.float32
    attention: str = "auto"
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        batch, tokens, _ = x.shape
        head_dim = self.width // self.heads
        qkv = nn.Dense(3 * self.width, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=_trunc_normal, name="qkv")(x)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, head_dim)
        dropping = train and self.attention_dropout > 0
        kernel = attention_kernel(self.attention, self.dtype, head_dim, dropping)
        key = self.make_rng("dropout") if dropping else None

        def core(qkv, key):
            return attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], kernel=kernel,
                          dropout=self.attention_dropout, key=key)
        if self.remat == "attention":
            core = jax.checkpoint(core)
        out = core(qkv, key).reshape(batch, tokens, self.width)
        out = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=_trunc_normal, name="proj")(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    width: int
    heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    attention: str = "auto"
    remat: str = "none"

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                            param_dtype=jnp.float32, use_fast_variance=False, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        drop_path = DropPath(self.drop_path)
        h = Attention(self.width, self.heads, self.attention_dropout, self.dropout, self.dtype,
                      self.attention, self.remat, name="attn")(self._norm("norm1")(x), train)
        x = x + drop_path(h, train)
        h = self._norm("norm2")(x)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_trunc_normal, name="fc1")(h)
        h = nn.gelu(h, approximate=False)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_trunc_normal, name="fc2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return x + drop_path(h, train)


def run_blocks(block: Block, params: Sequence[Any], x: jax.Array, train: bool,
               rng: jax.Array | None) -> jax.Array:
    """``x`` through one unbound ``block`` per entry of ``params`` (each a block's
    ``{'params'}`` subtree, all of the same shapes) as one ``lax.scan``; ``rng`` (or None)
    is split into one 'dropout' key per block. ``block.remat == 'block'`` recomputes each
    block in the backward pass. Stochastic depth, whose rate differs per block, is not
    supported here (`ASTEncoder` unrolls the blocks then)."""
    if block.drop_path > 0:
        raise ValueError("run_blocks applies one block configuration; drop_path must be 0")
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
    keys = jax.random.split(rng, len(params)) if rng is not None else jnp.zeros(len(params))

    def body(x, inputs):
        p, key = inputs
        rngs = {"dropout": key} if rng is not None else {}
        return block.apply({"params": p}, x, train, rngs=rngs), None
    if block.remat == "block":
        body = jax.checkpoint(body, prevent_cse=False)
    return jax.lax.scan(body, x, (stacked, keys))[0]
