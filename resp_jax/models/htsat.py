"""The HTS-AT encoder and its weights on disk (docs/method.md §12).

Why a fourth backbone: HTS-AT (Chen et al., ICASSP 2022), a hierarchical Swin Transformer on
log-mel spectrograms, is the audio tower of LAION's CLAP (``laion/clap-htsat-unfused``, the
encoder of BTS, Interspeech 2024) and of OPERA-CT (evelyn0414/OPERA, NeurIPS 2024 datasets
and benchmarks: pretrained contrastively on 136k respiratory recordings).

``HTSATEncoder`` maps a log-mel ``x [batch, frames, mel]`` (``data.frontend='clap'`` or
``'opera'``) to pooled features ``[batch, D]`` float32, as both references compute them:

1. BatchNorm over the mel bins (``bn0``; PyTorch's numbers, `cnn6.BatchNorm`);
2. the frames stretched to ``spec_size * freq_ratio`` (1024; freq_ratio = spec_size / mel = 4)
   by PyTorch's bicubic interpolation (align_corners), then folded into a
   ``spec_size x spec_size`` image: row ``chunk * mel + bin``, column ``frame % spec_size``
   for the four consecutive chunks of 256 frames;
3. a ``patch_size`` convolution with stride ``patch_stride`` (4: a 64 x 64 token map of
   ``embed_dim`` = 96) and a LayerNorm;
4. Swin stages of ``depths`` (2, 2, 6, 2) blocks with ``heads`` (4, 8, 16, 32): window
   attention (``window_size`` 8) with a relative position bias, every second block on windows
   shifted by half a window; between stages patch merging halves the map and doubles the width
   (96, 192, 384, 768);
5. a LayerNorm; the pooled output ('latent', D = 768) is the mean of every token (HTS-AT's
   ``latent_output``, CLAP's ``pooler_output``); with ``projection_dim`` CLAP's audio projection
   Linear -> ReLU -> Linear follows ('projection': BTS classifies CLAP's ``audio_embeds``).

The token-semantic head of the OPERA-CT checkpoint (``tscam_classes``: a (2, 3) convolution
to the AudioSet classes over the tokens regrouped as (bin, time)) is kept and computed by
``outputs=True`` (clipwise and framewise sigmoids), not by the pooled features.

Variables are ``{'params', 'batch_stats'}`` (bn0's running statistics). From scratch the
parameters are drawn as the HTS-AT code draws them (Linear and the bias tables
truncated-normal 0.02, biases 0; the convolutions PyTorch's default). ``scan`` runs the blocks
of a stage with two or more (regular, shifted) pairs as one ``lax.scan`` over the pairs
(stage 3: 3 pairs), with ``remat`` as `resp_jax.models.transformer`.
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
from resp_jax.models.beats_layers import torch_default_bias_init, torch_default_init
from resp_jax.models.cnn6 import BatchNorm
from resp_jax.models.htsat_layers import PatchMerging, SwinBlock, stretch, trunc_normal
from resp_jax.models.transformer import REMAT, remat_choice

INPUTS = ("frames_bins", "bins_frames")  # HTSATEncoder.input
OUTPUTS = ("latent", "projection")       # HTSATEncoder.output: what the pooled features are
# encoder.json / model.htsat fields that define the architecture, with HTS-AT's published
# sizes (HTS-AT-tiny: CLAP's and OPERA-CT's audio tower).
ARCH_DEFAULTS = {
    "num_mel_bins": 64, "spec_size": 256, "patch_size": 4, "patch_stride": 4, "embed_dim": 96,
    "depths": (2, 2, 6, 2), "heads": (4, 8, 16, 32), "window_size": 8, "mlp_ratio": 4.0,
    "layer_norm_eps": 1e-5, "projection_dim": 0, "tscam_classes": 0,
}
ARCH_FIELDS = tuple(ARCH_DEFAULTS)


class HTSATEncoder(nn.Module):
    """HTS-AT: ``x [B, frames, mel]`` (``input='bins_frames'``: [B, mel, frames]) -> ``[B, D]``
    float32 (module doc). ``frames`` may be anything up to ``spec_size * freq_ratio``.
    ``mask`` [B] keeps padded rows out of bn0's batch statistics."""

    num_mel_bins: int = 64
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: int = 4
    embed_dim: int = 96
    depths: tuple = (2, 2, 6, 2)
    heads: tuple = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    projection_dim: int = 0
    tscam_classes: int = 0
    output: str = "latent"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    input: str = "frames_bins"
    remat: str = "auto"
    scan: bool = True

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.num_mel_bins

    @property
    def width(self) -> int:
        """Width of the pooled output."""
        if self.output == "projection":
            return self.projection_dim
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def check(self) -> None:
        problems = []
        if self.input not in INPUTS:
            problems.append(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "projection" and not self.projection_dim:
            problems.append("output 'projection' needs projection_dim > 0")
        if len(self.depths) != len(self.heads) or not self.depths:
            problems.append(f"depths {self.depths} and heads {self.heads} must be as long")
        if self.spec_size % self.num_mel_bins or self.spec_size < self.num_mel_bins:
            problems.append(f"spec_size {self.spec_size} is not a multiple of "
                            f"num_mel_bins {self.num_mel_bins}")
        grid = self.spec_size // self.patch_stride
        if grid % 2 ** (len(self.depths) - 1):
            problems.append(f"a {grid} x {grid} token map cannot be merged "
                            f"{len(self.depths) - 1} times")
        for i, h in enumerate(self.heads):
            if (self.embed_dim * 2 ** i) % h:
                problems.append(f"stage {i + 1} width {self.embed_dim * 2 ** i} is not "
                                f"divisible by {h} heads")
        if problems:
            raise ValueError("; ".join(problems))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None,
                 outputs: bool = False):
        self.check()
        x = jnp.asarray(x)
        if self.input == "bins_frames":
            x = jnp.swapaxes(x, 1, 2)
        target = self.spec_size * self.freq_ratio
        if x.ndim != 3 or x.shape[2] != self.num_mel_bins or not 1 < x.shape[1] <= target:
            raise ValueError(f"HTSATEncoder expects a log-mel [batch, frames, "
                             f"{self.num_mel_bins}] with 2 to {target} frames (input "
                             f"{self.input!r}), got shape {x.shape}")
        x = BatchNorm(name="bn0")(x.astype(jnp.float32), train, mask)  # per mel bin
        if x.shape[1] < target:
            x = stretch(x, target)
        b, ratio, mel = x.shape[0], self.freq_ratio, self.num_mel_bins
        image = x.reshape(b, ratio, self.spec_size, mel).transpose(0, 1, 3, 2)
        image = image.reshape(b, ratio * mel, self.spec_size, 1).astype(self.dtype)
        pad = (self.patch_size - self.patch_stride) // 2
        h = nn.Conv(self.embed_dim, (self.patch_size,) * 2, strides=(self.patch_stride,) * 2,
                    padding=((pad, pad), (pad, pad)), dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=torch_default_init,
                    bias_init=torch_default_bias_init(self.patch_size ** 2),
                    name="patch_embed")(image)
        h = self._norm("patch_norm")(h)
        rates = np.linspace(0.0, self.drop_path, sum(self.depths))
        first = 0
        for stage, (depth, heads) in enumerate(zip(self.depths, self.heads)):
            h = self._stage(h, stage, depth, heads, rates[first:first + depth], train)
            first += depth
            if stage < len(self.depths) - 1:
                h = PatchMerging(self.layer_norm_eps, self.dtype, name=f"merge{stage}")(h)
        h = self._norm("norm")(h).astype(jnp.float32)  # [B, H', W', C]
        latent = h.mean(axis=(1, 2))
        result = {"latent": latent}
        if self.projection_dim:
            p = nn.Dense(self.projection_dim, kernel_init=trunc_normal, name="projection1")(latent)
            result["projection"] = nn.Dense(self.projection_dim, kernel_init=trunc_normal,
                                            name="projection2")(nn.relu(p))
        if self.tscam_classes:
            result.update(self._token_semantic(h))
        return result if outputs else result[self.output]

    def _norm(self, name):
        return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                            param_dtype=jnp.float32, use_fast_variance=False, name=name)

    def _token_semantic(self, h):
        """HTS-AT's token-semantic head: tokens regrouped as (bin, chunk * time), a (bins, 3)
        convolution to the classes; clipwise = sigmoid(mean over time), framewise = sigmoid
        repeated 8 * patch_stride times per time step."""
        b, rows, cols, c = h.shape
        bins = rows // self.freq_ratio
        grouped = h.reshape(b, self.freq_ratio, bins, cols, c).transpose(0, 2, 1, 3, 4)
        grouped = grouped.reshape(b, bins, self.freq_ratio * cols, c)
        logits = nn.Conv(self.tscam_classes, (bins, 3), padding=((0, 0), (1, 1)),
                         kernel_init=torch_default_init,
                         bias_init=torch_default_bias_init(bins * 3 * c),
                         name="tscam_conv")(grouped)[:, 0]  # [B, time, classes]
        repeat = 8 * self.patch_stride
        return {"clipwise": jax.nn.sigmoid(logits.mean(axis=1)),
                "framewise": jnp.repeat(jax.nn.sigmoid(logits), repeat, axis=1)}

    def _stage(self, h, stage: int, depth: int, heads: int, rates, train: bool):
        dim = self.embed_dim * 2 ** stage
        stochastic = bool(self.drop_path > 0)

        def block(i, cls=SwinBlock, **kw):
            return cls(dim, heads, self.window_size, 0 if i % 2 == 0 else self.window_size // 2,
                       self.mlp_ratio, self.layer_norm_eps, self.dropout,
                       self.attention_dropout, stochastic, self.dtype, **kw)
        pairs = depth // 2
        if self.is_initializing() or not self.scan or depth % 2 or pairs < 2:
            remat = remat_choice(self.remat) == "block" and not self.is_initializing()
            cls = nn.remat(SwinBlock, static_argnums=(2,)) if remat else SwinBlock
            for i in range(depth):
                h = block(i, cls, name=f"stage{stage}_block{i}")(h, train, float(rates[i]))
            return h
        params = self.variables["params"]
        even = [params[f"stage{stage}_block{i}"] for i in range(0, depth, 2)]
        odd = [params[f"stage{stage}_block{i}"] for i in range(1, depth, 2)]
        rng = self.make_rng("dropout") if train and (
            stochastic or self.dropout > 0 or self.attention_dropout > 0) else None
        return run_pairs(block(0, parent=None), block(1, parent=None), even, odd,
                         jnp.asarray(rates, jnp.float32).reshape(pairs, 2), h, train, rng,
                         remat_choice(self.remat) == "block")


def run_pairs(even: SwinBlock, odd: SwinBlock, even_params, odd_params, rates, x, train: bool,
              rng, remat: bool):
    """``x`` through (regular, shifted) block pairs as one ``lax.scan`` over their stacked
    parameters; ``rates`` [pairs, 2] are the blocks' stochastic depth rates; ``rng`` (or
    None) is split into one 'dropout' key per block."""
    stack = lambda ps: jax.tree.map(lambda *leaves: jnp.stack(leaves), *ps)  # noqa: E731
    pairs = len(even_params)
    keys = (jax.random.split(rng, (pairs, 2)) if rng is not None
            else jnp.zeros((pairs, 2)))

    def body(x, inputs):
        pe, po, rate, key = inputs
        rngs = [({"dropout": key[j]} if rng is not None else {}) for j in range(2)]
        x = even.apply({"params": pe}, x, train, rate[0], rngs=rngs[0])
        return odd.apply({"params": po}, x, train, rate[1], rngs=rngs[1]), None
    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    return jax.lax.scan(body, x, (stack(even_params), stack(odd_params), rates, keys))[0]


# ----------------------------------------------------------------------------------------------
# The backbone hooks (resp_jax.models.BACKBONES).

AST_ONLY = ("attention",)  # model.* fields HTS-AT does not read ('xla' is accepted)


def resolve(config) -> None:
    """Fills the HTS-AT placeholders when a run starts (`resp_jax.configuration.resolve`):
    every ``model.htsat.<field>`` left None takes the converted encoder's value (init_from) or
    `ARCH_DEFAULTS`; ``model.htsat.output`` None = 'projection' when the encoder has one,
    else 'latent'; ``model.proj_hidden`` / ``proj_out`` None = the pooled width."""
    m = config.model
    if "htsat" not in m:
        raise ValueError("model.name='htsat' reads the model.htsat fields of "
                         "configs/htsat_recipes.py (configs/clap_*.py, opera_*.py start from it)")
    if m.get("attention", "auto") not in ("auto", "xla"):
        raise ValueError(f"config.model.attention={m.attention!r}: HTS-AT's window attention "
                         "adds a bias and a shift mask and runs XLA's kernel ('auto' or 'xla')")
    if m.get("remat", "auto") not in REMAT:
        raise ValueError(f"config.model.remat must be one of {REMAT}, got {m.remat!r}")
    source = encoder_meta(m.init_from) if m.init_from else ARCH_DEFAULTS
    for field in ARCH_FIELDS:
        if m.htsat[field] is None:
            value = source[field]
            m.htsat[field] = (tuple(int(v) for v in value) if field in ("depths", "heads")
                              else type(ARCH_DEFAULTS[field])(value))
    if m.htsat.output is None:
        m.htsat.output = "projection" if m.htsat.projection_dim else "latent"
    if m.htsat.output not in OUTPUTS:
        raise ValueError(f"config.model.htsat.output must be one of {OUTPUTS}, got "
                         f"{m.htsat.output!r}")
    width = encoder(config).width
    for field in ("proj_hidden", "proj_out"):
        if m[field] is None:
            m[field] = int(width)


def _arch(config) -> dict[str, Any]:
    fields = {k: v for k, v in config.model.get("htsat", {}).items() if v is not None}
    out = {**ARCH_DEFAULTS, **{k: fields[k] for k in ARCH_FIELDS if k in fields}}
    out["depths"], out["heads"] = tuple(out["depths"]), tuple(out["heads"])
    return out


def encoder(config) -> HTSATEncoder:
    """The encoder of a config (``model.htsat``, ``model.dropout/attention_dropout/drop_path/
    dtype/remat``) for the pipeline's ``[batch, bins, frames]`` inputs."""
    m = config.model
    output = m.get("htsat", {}).get("output") or "latent"
    return HTSATEncoder(**_arch(config), output=output, dropout=float(m.dropout),
                        attention_dropout=float(m.attention_dropout),
                        drop_path=float(m.drop_path), dtype=jnp.dtype(m.dtype),
                        input="bins_frames", remat=m.get("remat", "auto"))


def pretrained(config, input_shape) -> dict[str, Any] | None:
    """The converted encoder of ``model.init_from``, its architecture checked against the
    config; None without init_from. Any frame count fits (no absolute positions)."""
    del input_shape
    if not config.model.init_from:
        return None
    loaded, variables = load_pretrained(config.model.init_from)
    want = encoder(config)
    diffs = [f"{k} {getattr(loaded, k)!r} (config: {getattr(want, k)!r})"
             for k in ARCH_FIELDS if getattr(loaded, k) != getattr(want, k)]
    if diffs:
        raise ValueError(f"{config.model.init_from} holds an HTS-AT encoder that does not "
                         f"match config.model.htsat: {'; '.join(diffs)}")
    return variables


# ----------------------------------------------------------------------------------------------
# Converted encoders on disk (`resp_jax.models.converted`; tools/convert_clap.py and
# tools/convert_opera.py write them).


def encoder_shapes(encoder: HTSATEncoder) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of ``jax.ShapeDtypeStruct`` for ``encoder``."""
    x = jax.ShapeDtypeStruct((1, 8, encoder.num_mel_bins), jnp.float32)
    probe = encoder.clone(input="frames_bins")
    return jax.eval_shape(lambda x: probe.init(jax.random.key(0), x, train=False), x)


def _check_meta(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in ARCH_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    arch = {k: meta[k] for k in ARCH_FIELDS}
    arch["depths"], arch["heads"] = tuple(arch["depths"]), tuple(arch["heads"])
    try:
        HTSATEncoder(**arch).check()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return {**meta, **arch}


def save_encoder(directory: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], *, overwrite: bool = False, extra=None) -> Path:
    """Writes encoder ``variables`` ({'params', 'batch_stats'}) and ``meta`` (every
    `ARCH_FIELDS` entry, anything else JSON-serialisable as provenance) atomically;
    ``extra(tmp)`` adds to the directory (CLAP's text tower: `converted.write`)."""
    meta = _check_meta(meta, "meta")
    arch = {k: meta[k] for k in ARCH_FIELDS}
    variables = {k: variables[k] for k in variables}
    converted.check_variables(encoder_shapes(HTSATEncoder(**arch)), variables,
                              f"variables do not fit an HTS-AT encoder {arch}")
    record = {**meta, "depths": list(arch["depths"]), "heads": list(arch["heads"]),
              "architecture": "htsat"}
    return converted.write(directory, variables, record, overwrite=overwrite, extra=extra)


def encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``directory/encoder.json``."""
    meta = converted.read_meta(directory, "htsat",
                               "tools/convert_clap.py or tools/convert_opera.py")
    return _check_meta(meta, str(Path(directory) / converted.META_FILE))


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32,
                    input: str = "frames_bins", **fields: Any) -> tuple[HTSATEncoder, dict]:
    """Reads an encoder written by :func:`save_encoder` (tools/convert_clap.py,
    tools/convert_opera.py). Returns ``(encoder, {'params', 'batch_stats'})``;
    ``encoder.apply(variables, x, train=False)`` maps a log-mel ``x [B, frames, mel]`` to
    ``[B, D]``. ``fields``: output, dropout, attention_dropout, drop_path, remat, scan."""
    allowed = {"output", "dropout", "attention_dropout", "drop_path", "remat", "scan"}
    if fields.keys() - allowed:
        raise TypeError(f"load_pretrained accepts only {sorted(allowed)} as extra fields, got "
                        f"{sorted(fields.keys() - allowed)}")
    meta = encoder_meta(directory)
    arch = {k: meta[k] for k in ARCH_FIELDS}
    encoder = HTSATEncoder(**arch, dtype=dtype, input=input, **fields)
    encoder.check()
    state_dir, restored = converted.read_state(directory)
    converted.check_variables(encoder_shapes(encoder), restored,
                              f"{state_dir} does not fit the HTS-AT encoder of "
                              f"{converted.META_FILE}")
    variables = {k: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(restored[k]))
                 for k in ("params", "batch_stats")}
    return encoder, variables
