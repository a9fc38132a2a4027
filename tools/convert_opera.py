"""Converts OPERA-CT's released Lightning checkpoint into a resp_jax HTS-AT encoder directory
(docs/method.md §12).

    python tools/convert_opera.py --checkpoint=encoder-operaCT.ckpt --output=DIR

The layout OPERA releases (hub evelyn0414/OPERA, ``encoder-operaCT.ckpt``), and nothing else:
a torch file holding a Lightning checkpoint dict whose ``state_dict`` is the state of OPERA's
``Cola(encoder='htsat')`` (src/model/models_cola.py:43-67): ``encoder.encoder.htsat.*``, the
``HTSAT_Swin_Transformer`` of src/model/htsat/htsat.py (bn0, patch embedding, Swin stages
``layers.S.blocks.B.*`` with fused qkv, ``layers.S.downsample.*``, ``norm``, the
token-semantic head ``tscam_conv``), and the contrastive projection ``g``, ``layer_norm``,
``linear``. ``hyper_parameters.encoder`` must be 'htsat' when present. The sizes are read from
the shapes (embed width, depths, heads from the bias tables, window from their size, classes
from tscam_conv); the rest is HTSAT_Swin_Transformer's defaults as OPERA builds it (spec_size
256, 64 mel bins, patch 4 / stride 4, mlp ratio 4, LayerNorm eps 1e-5), unless --spec_size /
--num_mel_bins say otherwise. Converted: the encoder with its token-semantic head. Left out and
listed under ``dropped``: the contrastive projection (OPERA's benchmark uses the 768-d latent),
HTS-AT's AudioSet ``head`` (unused by its token-semantic forward), torchlibrosa's STFT and mel
buffers (``spectrogram_extractor.*``, ``logmel_extractor.*``: OPERA computes features outside
the model), ``relative_position_index`` (checked against resp_jax's), ``attn_mask`` (recomputed)
and ``num_batches_tracked``. Missing, unknown, wrong-shaped or non-finite entries are refused,
naming each; DIR is then not created. DIR is written atomically and read by
``resp_jax.models.htsat.load_pretrained``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_ast  # noqa: E402
from convert_ast import ConversionError, check_entries  # noqa: E402,F401

from resp_jax.models import htsat  # noqa: E402
from resp_jax.models.htsat_layers import relative_position_index, shift_mask  # noqa: E402

PREFIX = "encoder.encoder.htsat."
EXPECTED = ("expected OPERA-CT's released Lightning checkpoint (encoder-operaCT.ckpt): a dict "
            "with 'state_dict' holding Cola(encoder='htsat')'s 'encoder.encoder.htsat.*' entries")
DROPPED = (PREFIX + "head.", PREFIX + "spectrogram_extractor.", PREFIX + "logmel_extractor.",
           "g.", "layer_norm.", "linear.", "middle.")
BUFFERS = re.compile(r".*(relative_position_index|attn_mask|num_batches_tracked)$")


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(float entries, the buffers the encoder recomputes, hyper_parameters)."""
    import torch

    checkpoint = convert_ast.torch_load(path, EXPECTED)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"),
                                                             Mapping):
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else None
        raise ConversionError(f"{path}: holds a {type(checkpoint).__name__}"
                              f"{f' with keys {keys}' if keys else ''}, no 'state_dict'; "
                              f"{EXPECTED}")
    hyper = dict(checkpoint.get("hyper_parameters") or {})
    if hyper.get("encoder", "htsat") != "htsat":
        raise ConversionError(f"{path}: hyper_parameters.encoder = {hyper['encoder']!r}; OPERA-CT "
                              "is Cola(encoder='htsat') (operaCE is an EfficientNet)")
    state = dict(checkpoint["state_dict"])
    buffers = {k: state.pop(k).numpy() for k in list(state)
               if isinstance(k, str) and BUFFERS.match(k) and isinstance(state[k], torch.Tensor)}
    return convert_ast.as_numpy(state, path, EXPECTED), buffers, hyper


def architecture(state: Mapping[str, np.ndarray], where: str, *, spec_size: int,
                 num_mel_bins: int) -> dict[str, Any]:
    """Sizes from the shapes, HTSAT_Swin_Transformer's defaults for the rest."""
    needed = [PREFIX + k for k in ("patch_embed.proj.weight", "layers.0.blocks.0.mlp.fc1.weight",
                                   "layers.0.blocks.0.attn.relative_position_bias_table")]
    absent = [k for k in needed if k not in state]
    if absent:
        sample = sorted(state)[:6]
        raise ConversionError(f"{where}: missing {absent} (keys such as {sample}); {EXPECTED}")
    blocks: dict[int, int] = {}
    for k in state:
        m = re.match(re.escape(PREFIX) + r"layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            blocks[s] = max(blocks.get(s, 0), b + 1)
    stages = sorted(blocks)
    if stages != list(range(len(stages))):
        raise ConversionError(f"{where}: stages {stages} are not numbered 0 .. n - 1")
    patch = state[PREFIX + "patch_embed.proj.weight"]
    embed, table0 = patch.shape[0], state[PREFIX + "layers.0.blocks.0.attn.relative_position_bias_table"]
    window = int(round((np.sqrt(table0.shape[0]) + 1) / 2))
    heads = tuple(int(state[f"{PREFIX}layers.{s}.blocks.0.attn.relative_position_bias_table"]
                      .shape[1]) for s in stages
                  if f"{PREFIX}layers.{s}.blocks.0.attn.relative_position_bias_table" in state)
    tscam = state.get(PREFIX + "tscam_conv.weight")
    arch = {"num_mel_bins": num_mel_bins, "spec_size": spec_size, "patch_size": int(patch.shape[-1]),
            "patch_stride": int(patch.shape[-1]), "embed_dim": int(embed),
            "depths": tuple(blocks[s] for s in stages), "heads": heads, "window_size": window,
            "mlp_ratio": state[PREFIX + "layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed,
            "layer_norm_eps": 1e-5, "projection_dim": 0,
            "tscam_classes": int(tscam.shape[0]) if tscam is not None else 0}
    try:
        if len(heads) != len(stages):
            raise ValueError(f"a relative position bias table is missing in stages {stages}")
        htsat.HTSATEncoder(**arch).check()
    except ValueError as e:
        raise ConversionError(f"{where}: not a supported HTS-AT: {e}") from e
    return arch


def _stage_windows(arch) -> list[tuple[int, int]]:
    """(window, map side) per stage: the HTS-AT code shrinks a window to a smaller map."""
    side = arch["spec_size"] // arch["patch_stride"]
    out = []
    for s in range(len(arch["depths"])):
        out.append((min(arch["window_size"], side), side))
        side //= 2
    return out


def expected_entries(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Torch names and shapes of HTSAT_Swin_Transformer's converted entries."""
    e, p, mel = arch["embed_dim"], arch["patch_size"], arch["num_mel_bins"]
    width = e * 2 ** (len(arch["depths"]) - 1)
    out = {"patch_embed.proj.weight": (e, 1, p, p), "patch_embed.proj.bias": (e,),
           "bn0.weight": (mel,), "bn0.bias": (mel,), "bn0.running_mean": (mel,),
           "bn0.running_var": (mel,)}
    for name, n in (("patch_embed.norm", e), ("norm", width)):
        out.update({f"{name}.weight": (n,), f"{name}.bias": (n,)})
    for s, ((window, _), depth) in enumerate(zip(_stage_windows(arch), arch["depths"])):
        d, h, mlp = e * 2 ** s, arch["heads"][s], int(e * 2 ** s * arch["mlp_ratio"])
        for i in range(depth):
            b = f"layers.{s}.blocks.{i}."
            out[b + "attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, h)
            for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)),
                                ("mlp.fc1", (mlp, d)), ("mlp.fc2", (d, mlp))):
                out.update({f"{b}{name}.weight": shape, f"{b}{name}.bias": shape[:1]})
            for norm in ("norm1", "norm2"):
                out.update({f"{b}{norm}.weight": (d,), f"{b}{norm}.bias": (d,)})
        if s < len(arch["depths"]) - 1:
            m = f"layers.{s}.downsample."
            out.update({m + "reduction.weight": (2 * d, 4 * d), m + "norm.weight": (4 * d,),
                        m + "norm.bias": (4 * d,)})
    if arch["tscam_classes"]:
        bins = arch["spec_size"] // 2 ** (len(arch["depths"]) - 1) // arch["patch_stride"] \
            // (arch["spec_size"] // mel)
        out.update({"tscam_conv.weight": (arch["tscam_classes"], width, bins, 3),
                    "tscam_conv.bias": (arch["tscam_classes"],)})
    return {PREFIX + k: v for k, v in out.items()}


def check_buffers(buffers: Mapping[str, np.ndarray], arch, where: str) -> None:
    """Stored relative position indices and shift masks must be the ones resp_jax computes."""
    for s, ((window, side), depth) in enumerate(zip(_stage_windows(arch), arch["depths"])):
        for i in range(depth):
            b = f"{PREFIX}layers.{s}.blocks.{i}."
            index = buffers.get(b + "attn.relative_position_index")
            if index is not None and not np.array_equal(index, relative_position_index(window)):
                raise ConversionError(f"{where}: {b}attn.relative_position_index is not the Swin "
                                      f"index of a {window} x {window} window")
            mask = buffers.get(b + "attn_mask")
            shift = window // 2 if i % 2 and side > window else 0
            if mask is None:
                continue
            want = shift_mask(side, side, window, shift) if shift else None
            if want is None or mask.shape != want.shape or not np.allclose(mask, want):
                raise ConversionError(f"{where}: {b}attn_mask is not the shift mask of a "
                                      f"{side} x {side} map with {window} x {window} windows")


def to_flax(state: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's ``{'params', 'batch_stats'}`` (numpy) from a checked state dict."""
    dense, norm = convert_ast._dense, convert_ast._norm

    def pair(name, fn=dense):
        return fn(state[PREFIX + name + ".weight"], state[PREFIX + name + ".bias"])

    def conv(name):
        return {"kernel": np.ascontiguousarray(state[PREFIX + name + ".weight"]
                                               .transpose(2, 3, 1, 0)),
                "bias": state[PREFIX + name + ".bias"]}
    params: dict[str, Any] = {"bn0": pair("bn0", norm), "patch_embed": conv("patch_embed.proj"),
                              "patch_norm": pair("patch_embed.norm", norm),
                              "norm": pair("norm", norm)}
    if arch["tscam_classes"]:
        params["tscam_conv"] = conv("tscam_conv")
    for s, depth in enumerate(arch["depths"]):
        for i in range(depth):
            b = f"layers.{s}.blocks.{i}."
            params[f"stage{s}_block{i}"] = {
                "norm1": pair(b + "norm1", norm), "norm2": pair(b + "norm2", norm),
                "attn": {"qkv": pair(b + "attn.qkv"), "proj": pair(b + "attn.proj"),
                         "relative_position_bias_table":
                             state[PREFIX + b + "attn.relative_position_bias_table"]},
                "fc1": pair(b + "mlp.fc1"), "fc2": pair(b + "mlp.fc2")}
        if s < len(arch["depths"]) - 1:
            m = f"layers.{s}.downsample."
            params[f"merge{s}"] = {"norm": pair(m + "norm", norm), "reduction": {
                "kernel": np.ascontiguousarray(state[PREFIX + m + "reduction.weight"].T)}}
    stats = {"bn0": {"mean": state[PREFIX + "bn0.running_mean"],
                     "var": state[PREFIX + "bn0.running_var"]}}
    return {"params": params, "batch_stats": stats}


def convert(checkpoint: str | Path, output: str | Path, *, spec_size: int = 256,
            num_mel_bins: int = 64, overwrite: bool = False) -> Path:
    """Checks ``checkpoint`` and writes the converted encoder to ``output``; nothing is
    written unless every check passes, and ``output`` appears only when complete."""
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not empty "
                              "(choose another --output or pass --overwrite)")
    state, buffers, hyper = read_checkpoint(checkpoint)
    where = f"{checkpoint} is not OPERA-CT's Cola(encoder='htsat') state"
    arch = architecture(state, where, spec_size=spec_size, num_mel_bins=num_mel_bins)
    check_buffers(buffers, arch, where)
    dropped = check_entries(state, expected_entries(arch), DROPPED, where)
    dropped.update({k: list(v.shape) for k, v in buffers.items()})
    meta = {**arch, "dropped": dropped, "hyper_parameters": {
                k: v for k, v in hyper.items() if isinstance(v, (int, float, str, bool))},
            "source": {"layout": "opera_lightning", "converter": "tools/convert_opera.py",
                       "checkpoint": checkpoint.name, "sha256": convert_ast._sha256(checkpoint)}}
    try:
        return htsat.save_encoder(output, to_flax(state, arch), meta, overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        raise ConversionError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="OPERA-CT's encoder-operaCT.ckpt")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory to create for the converted encoder")
    parser.add_argument("--spec_size", type=int, default=256,
                        help="HTS-AT's image side (OPERA-CT: 256)")
    parser.add_argument("--num_mel_bins", type=int, default=64,
                        help="mel bins of its input (OPERA-CT: 64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory")
    args = parser.parse_args(argv)
    return convert_ast.report(lambda: convert(args.checkpoint, args.output,
                                              spec_size=args.spec_size,
                                              num_mel_bins=args.num_mel_bins,
                                              overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
