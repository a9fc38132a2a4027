"""Converts published AST weights into a resp_jax AST encoder directory (docs/method.md §9).

    python tools/convert_ast.py --checkpoint=audioset_10_10_0.4593.pth --output=DIR
    python tools/convert_ast.py --checkpoint=ast-finetuned-audioset-10-10-0.4593/ --output=DIR

Two layouts are read, and nothing else:

- ``original``: the AST release (YuanGongND/ast), e.g. ``audioset_10_10_0.4593.pth``: a torch
  state dict saved under DataParallel, keys ``module.v.*`` in timm DeiT names (fused
  ``attn.qkv``) plus ``module.mlp_head.{0,1}.*``. The strides and the input size are not in the
  file: --fstride/--tstride (default 10, 10) and --num_bins/--frames (default 128 x 1024) must
  give the position embedding's grid (12 x 101). Nor are the heads: DeiT's sizes have
  width / 64 (`DEIT_HEADS`); another width needs --heads (a wrong count would give another
  model with the same weights, so it is refused, not guessed). LayerNorm eps: timm's 1e-6.
- ``hub``: a Hugging Face directory (or a file inside it) holding ``config.json`` and
  ``model.safetensors`` or ``pytorch_model.bin``, of ``ASTForAudioClassification`` (keys
  prefixed ``audio_spectrogram_transformer.``) or ``ASTModel`` (no prefix), in the names the hub
  files use (``encoder.layer.N.attention.attention.{query,key,value}``, ...). Sizes, strides,
  input size and layer_norm_eps (1e-12 on the hub) come from config.json.

Only the encoder is kept. The classifier (``module.mlp_head.*`` / ``classifier.*``) and the
original file's unused DeiT ImageNet heads (``module.v.head.*``, ``module.v.head_dist.*``) are
dropped; their names and shapes are recorded under ``dropped`` in encoder.json. Missing,
unknown or wrong-shaped entries, or a file that is not a state dict, are refused with one
message listing every difference; DIR is then not created. DIR is written atomically (see
``resp_jax.models.ast.save_encoder``) and read by ``resp_jax.models.ast.load_pretrained(DIR,
frames=N)``, which adapts the position embedding to N frames.

torch and safetensors are imported here and in tests only (the optional ``torch`` and ``ast``
extras). .safetensors files are read with safetensors, .pth/.bin with torch.load(weights_only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

try:
    from resp_jax.models import ast
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from resp_jax.models import ast

HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HUB_PREFIX = "audio_spectrogram_transformer."
ORIGINAL_PREFIX = "module.v."
ORIGINAL_DROPPED = ("module.mlp_head.", "module.v.head.", "module.v.head_dist.")
HUB_DROPPED = ("classifier.",)
# Heads of the DeiT sizes AST builds on (tiny224, small224, base224/384; [pm] models/ast.py:56-66)
DEIT_HEADS = {192: 3, 384: 6, 768: 12}
EXPECTED_LAYOUTS = (
    "expected either the original AST release (a torch state dict with 'module.v.*' keys, "
    "e.g. audioset_10_10_0.4593.pth) or a Hugging Face AST directory (config.json with "
    "model.safetensors or pytorch_model.bin)")


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message says why (and lists every difference)."""


# --- Reading files.


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (safetensors) or a torch file (weights_only), as
    float32 numpy arrays keyed by name; anything that is not a flat dict of tensors is refused."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # SafetensorError, OSError...
            raise ConversionError(f"{path}: not a readable safetensors file: "
                                  f"{type(e).__name__}: {e}") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError... on other files
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConversionError(f"{path}: not a PyTorch state dict that torch.load("
                                  f"weights_only=True) can read ({type(e).__name__}: {first}); "
                                  f"{EXPECTED_LAYOUTS}") from e
    return as_numpy(state, path, EXPECTED_LAYOUTS)


def torch_load(path: Path, expected: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU of a whole checkpoint (BEATs', OPERA's), with
    a ConversionError that names the file and says what was ``expected``."""
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError... on other files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(f"{path}: not a file torch.load(weights_only=True) can read "
                              f"({type(e).__name__}: {first}); {expected}") from e


def as_numpy(state: Any, path: Path, expected: str) -> dict[str, np.ndarray]:
    """A state dict of floating-point tensors as float32 numpy arrays; anything else is
    refused (``expected`` names the accepted layouts in the message)."""
    import torch

    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{path}: holds a {type(state).__name__}"
                              f"{' (empty)' if isinstance(state, Mapping) else ''}, not a state "
                              f"dict of tensors; {expected}")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: not a state dict of tensors; entries that are not "
                              f"named tensors: {', '.join(bad[:10])}; {expected}")
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            raise ConversionError(f"{path}: {k} has dtype {v.dtype}, expected floating point")
        out[k] = v.detach().to(torch.float32).cpu().numpy()
    return out


def find_layout(checkpoint: Path) -> tuple[str, Path, Path | None]:
    """('hub', weights file, config.json) or ('original', file, None) for ``checkpoint``."""
    if checkpoint.is_dir():
        directory = checkpoint
    elif checkpoint.is_file() and checkpoint.name in HUB_WEIGHTS:
        directory = checkpoint.parent
    elif checkpoint.is_file():
        return "original", checkpoint, None
    else:
        raise ConversionError(f"{checkpoint}: no such file or directory")
    config = directory / "config.json"
    weights = ([checkpoint] if checkpoint.is_file()
               else [directory / n for n in HUB_WEIGHTS if (directory / n).is_file()])
    if not config.is_file() or not weights:
        found = sorted(p.name for p in directory.iterdir())[:20]
        raise ConversionError(f"{checkpoint}: a Hugging Face AST directory needs config.json and "
                              f"one of {list(HUB_WEIGHTS)}; found {found}; {EXPECTED_LAYOUTS}")
    return "hub", weights[0], config


# --- Expected entries of each layout, and the mapping to the flax encoder.


def _block_entries(width: int, mlp: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per-block torch names and shapes in each layout."""
    vec, mat = (width,), (width, width)
    original = {"norm1.weight": vec, "norm1.bias": vec, "attn.qkv.weight": (3 * width, width),
                "attn.qkv.bias": (3 * width,), "attn.proj.weight": mat, "attn.proj.bias": vec,
                "norm2.weight": vec, "norm2.bias": vec, "mlp.fc1.weight": (mlp, width),
                "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (width, mlp), "mlp.fc2.bias": vec}
    hub = {"layernorm_before.weight": vec, "layernorm_before.bias": vec,
           "layernorm_after.weight": vec, "layernorm_after.bias": vec,
           "attention.output.dense.weight": mat, "attention.output.dense.bias": vec,
           "intermediate.dense.weight": (mlp, width), "intermediate.dense.bias": (mlp,),
           "output.dense.weight": (width, mlp), "output.dense.bias": vec}
    for part in ("query", "key", "value"):
        hub[f"attention.attention.{part}.weight"] = mat
        hub[f"attention.attention.{part}.bias"] = vec
    return {"original": original, "hub": hub}


def expected_entries(layout: str, arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Torch names (hub: without the ASTForAudioClassification prefix) and shapes."""
    w, p = arch["width"], arch["patch"]
    f_dim, t_dim = ast.patch_grid(arch["num_bins"], arch["frames"], p, arch["fstride"],
                                  arch["tstride"])
    mlp = int(round(w * arch["mlp_ratio"]))
    blocks = _block_entries(w, mlp)[layout]
    if layout == "original":
        top = {"cls_token": (1, 1, w), "dist_token": (1, 1, w),
               "pos_embed": (1, 2 + f_dim * t_dim, w), "patch_embed.proj.weight": (w, 1, p, p),
               "patch_embed.proj.bias": (w,), "norm.weight": (w,), "norm.bias": (w,)}
        entries = {ORIGINAL_PREFIX + k: v for k, v in top.items()}
        for i in range(arch["depth"]):
            entries.update({f"{ORIGINAL_PREFIX}blocks.{i}.{k}": v for k, v in blocks.items()})
        return entries
    entries = {"embeddings.cls_token": (1, 1, w), "embeddings.distillation_token": (1, 1, w),
               "embeddings.position_embeddings": (1, 2 + f_dim * t_dim, w),
               "embeddings.patch_embeddings.projection.weight": (w, 1, p, p),
               "embeddings.patch_embeddings.projection.bias": (w,),
               "layernorm.weight": (w,), "layernorm.bias": (w,)}
    for i in range(arch["depth"]):
        entries.update({f"encoder.layer.{i}.{k}": v for k, v in blocks.items()})
    return entries


def check_entries(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                  dropped: Sequence[str], what: str) -> dict[str, list[int]]:
    """Raises ConversionError listing every missing / unknown / wrong-shaped entry; returns the
    dropped entries (names starting with one of ``dropped``) and their shapes."""
    problems = [f"missing {k} (expected shape {shape})"
                for k, shape in expected.items() if k not in state]
    kept = {}
    for k, value in state.items():
        if k in expected:
            if tuple(value.shape) != expected[k]:
                problems.append(f"{k}: shape {tuple(value.shape)}, expected {expected[k]}")
            elif not np.isfinite(value).all():
                problems.append(f"{k}: has non-finite values")
        elif k.startswith(tuple(dropped)):
            kept[k] = list(value.shape)
        else:
            problems.append(f"unknown {k} (shape {tuple(value.shape)})")
    if problems:
        raise ConversionError(f"{what}; {len(problems)} difference(s):\n  "
                              + "\n  ".join(problems))
    return kept


def _dense(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"kernel": np.ascontiguousarray(weight.T), "bias": bias}


def _norm(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"scale": weight, "bias": bias}


def to_flax(state: Mapping[str, np.ndarray], layout: str, depth: int) -> dict[str, Any]:
    """Maps a checked state dict to the encoder's ``{'params'}`` (numpy): conv kernels
    (out, 1, kh, kw) -> (kh, kw, 1, out), linear weights transposed, separate q/k/v fused."""
    prefix = ORIGINAL_PREFIX if layout == "original" else ""

    def g(name):
        return state[prefix + name]
    if layout == "original":
        tokens = ("cls_token", "dist_token", "pos_embed", "patch_embed.proj", "norm")
    else:
        tokens = ("embeddings.cls_token", "embeddings.distillation_token",
                  "embeddings.position_embeddings", "embeddings.patch_embeddings.projection",
                  "layernorm")
    cls, dist, pos, proj, norm = tokens
    params: dict[str, Any] = {
        "cls_token": g(cls), "dist_token": g(dist), "pos_embed": g(pos),
        "patch_embed": {"kernel": np.ascontiguousarray(g(proj + ".weight").transpose(2, 3, 1, 0)),
                        "bias": g(proj + ".bias")},
        "norm": _norm(g(norm + ".weight"), g(norm + ".bias")),
    }
    for i in range(depth):
        if layout == "original":
            b = f"blocks.{i}."
            block = {"norm1": _norm(g(b + "norm1.weight"), g(b + "norm1.bias")),
                     "attn": {"qkv": _dense(g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias")),
                              "proj": _dense(g(b + "attn.proj.weight"), g(b + "attn.proj.bias"))},
                     "norm2": _norm(g(b + "norm2.weight"), g(b + "norm2.bias")),
                     "fc1": _dense(g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias")),
                     "fc2": _dense(g(b + "mlp.fc2.weight"), g(b + "mlp.fc2.bias"))}
        else:
            b = f"encoder.layer.{i}."
            a = b + "attention.attention."
            qkv_w = np.concatenate([g(a + f"{n}.weight") for n in ("query", "key", "value")])
            qkv_b = np.concatenate([g(a + f"{n}.bias") for n in ("query", "key", "value")])
            block = {"norm1": _norm(g(b + "layernorm_before.weight"),
                                    g(b + "layernorm_before.bias")),
                     "attn": {"qkv": _dense(qkv_w, qkv_b),
                              "proj": _dense(g(b + "attention.output.dense.weight"),
                                             g(b + "attention.output.dense.bias"))},
                     "norm2": _norm(g(b + "layernorm_after.weight"),
                                    g(b + "layernorm_after.bias")),
                     "fc1": _dense(g(b + "intermediate.dense.weight"),
                                   g(b + "intermediate.dense.bias")),
                     "fc2": _dense(g(b + "output.dense.weight"), g(b + "output.dense.bias"))}
        params[f"block{i}"] = block
    return {"params": params}


# --- The two layouts.


def _hub_arch(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture, provenance) from a Hugging Face AST config.json."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{config_path}: not readable JSON: {e}") from e
    if not isinstance(config, dict) or config.get("model_type") != "audio-spectrogram-transformer":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ConversionError(f"{config_path}: expected model_type "
                              f"'audio-spectrogram-transformer', got {kind!r}")
    names = {"width": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
             "mlp": "intermediate_size", "patch": "patch_size", "fstride": "frequency_stride",
             "tstride": "time_stride", "num_bins": "num_mel_bins", "frames": "max_length"}
    problems = [f"{v} missing or not a positive int" for v in names.values()
                if not (isinstance(config.get(v), int) and config[v] > 0)]
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {config['hidden_act']!r}, expected 'gelu' (exact)")
    if not config.get("qkv_bias", True):
        problems.append("qkv_bias false, expected true")
    if problems:
        raise ConversionError(f"{config_path}: not a supported AST config: " + "; ".join(problems))
    arch = {k: config[v] for k, v in names.items()}
    arch["mlp_ratio"] = arch.pop("mlp") / arch["width"]
    arch["layer_norm_eps"] = float(config.get("layer_norm_eps", 1e-12))
    provenance = {"architectures": config.get("architectures"),
                  "transformers_version": config.get("transformers_version")}
    return arch, provenance


def _original_arch(state: Mapping[str, np.ndarray], path: Path, *, heads: int | None,
                   fstride: int, tstride: int, num_bins: int, frames: int) -> dict[str, Any]:
    """The architecture of an original-release state dict: sizes from its shapes, the rest
    from the arguments (checked against the position embedding)."""
    needed = [ORIGINAL_PREFIX + k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight",
                                            "blocks.0.mlp.fc1.weight")]
    if not any(k.startswith(ORIGINAL_PREFIX) for k in state):
        sample = sorted(state)[:8]
        raise ConversionError(f"{path}: unknown layout (keys such as {sample}); "
                              f"{EXPECTED_LAYOUTS}")
    absent = [k for k in needed if k not in state]
    if absent:
        raise ConversionError(f"{path} is not an original-release AST state dict: missing "
                              f"{absent}; {EXPECTED_LAYOUTS}")
    width = state[ORIGINAL_PREFIX + "cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(re.escape(ORIGINAL_PREFIX) + r"blocks\.(\d+)\.", k)))
    patch = state[ORIGINAL_PREFIX + "patch_embed.proj.weight"].shape[-1]
    mlp = state[ORIGINAL_PREFIX + "blocks.0.mlp.fc1.weight"].shape[0]
    if heads is None:
        if int(width) not in DEIT_HEADS:
            raise ConversionError(
                f"{path}: width {width} is not one of the DeiT sizes of the original release "
                f"({', '.join(f'{w}: {h} heads' for w, h in DEIT_HEADS.items())}) and the file "
                "does not record its number of attention heads: pass --heads")
        heads = DEIT_HEADS[int(width)]
    arch = {"width": int(width), "depth": depth, "heads": int(heads), "mlp_ratio": mlp / width,
            "patch": int(patch), "fstride": fstride, "tstride": tstride, "num_bins": num_bins,
            "frames": frames, "layer_norm_eps": 1e-6}
    tokens = state[ORIGINAL_PREFIX + "pos_embed"].shape[1] - 2
    f_dim, t_dim = ast.patch_grid(num_bins, frames, patch, fstride, tstride)
    if tokens != f_dim * t_dim:
        raise ConversionError(
            f"{path}: the position embedding has {tokens} patch positions but {num_bins} bins x "
            f"{frames} frames with strides ({fstride}, {tstride}) give {f_dim} x {t_dim} = "
            f"{f_dim * t_dim}; pass the --num_bins/--frames/--fstride/--tstride the model was "
            "trained with (the AudioSet release: 128, 1024, 10, 10)")
    return arch


def convert(checkpoint: str | Path, output: str | Path, *, heads: int | None = None,
            fstride: int = 10, tstride: int = 10, num_bins: int = 128, frames: int = 1024,
            overwrite: bool = False) -> Path:
    """Checks ``checkpoint`` (either layout) and writes the converted encoder to ``output``.

    Nothing is written unless every check passes; ``output`` appears only when complete. The
    strides, input size and heads apply to the original layout only (the hub's config.json
    has them).
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not empty "
                              "(choose another --output or pass --overwrite)")
    layout, weights, config = find_layout(checkpoint)
    state = read_state_dict(weights)
    source: dict[str, Any] = {"layout": layout, "converter": "tools/convert_ast.py"}
    if layout == "hub":
        arch, source["config"] = _hub_arch(config)
        prefixed = [k for k in state if k.startswith(HUB_PREFIX)]
        if prefixed:
            source["class"] = "ASTForAudioClassification"
            state = {(k[len(HUB_PREFIX):] if k.startswith(HUB_PREFIX) else k): v
                     for k, v in state.items()}
        else:
            source["class"] = "ASTModel"
        dropped_prefixes = HUB_DROPPED if prefixed else ()
        what = (f"{weights} is not a Hugging Face {source['class']} matching "
                f"{config.name} (width {arch['width']}, depth {arch['depth']})")
    else:
        arch = _original_arch(state, weights, heads=heads, fstride=fstride, tstride=tstride,
                              num_bins=num_bins, frames=frames)
        dropped_prefixes = ORIGINAL_DROPPED
        what = (f"{weights} is not an original-release AST state dict of width "
                f"{arch['width']}, depth {arch['depth']}")
    try:
        ast.patch_grid(arch["num_bins"], arch["frames"], arch["patch"], arch["fstride"],
                       arch["tstride"])
        if arch["width"] % arch["heads"]:
            raise ValueError(f"width {arch['width']} is not divisible by {arch['heads']} heads")
    except ValueError as e:
        raise ConversionError(f"{checkpoint}: {e}") from e
    dropped = check_entries(state, expected_entries(layout, arch), dropped_prefixes, what)
    source.update(checkpoint=weights.name, sha256=_sha256(weights))
    if config is not None:
        source["config_sha256"] = _sha256(config)
    meta = {**arch, "source": source, "dropped": dropped}
    try:
        return ast.save_encoder(output, to_flax(state, layout, arch["depth"]), meta,
                                overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        raise ConversionError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="audioset_10_10_0.4593.pth, or a Hugging Face AST directory")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory to create for the converted encoder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory")
    original = parser.add_argument_group("original layout only (the hub has config.json)")
    for name, default in (("heads", None), ("fstride", 10), ("tstride", 10), ("num_bins", 128),
                          ("frames", 1024)):
        original.add_argument(f"--{name}", type=int, default=default,
                              help="default: the DeiT size's (width / 64); required "
                                   "for other widths" if name == "heads" else None)
    args = vars(parser.parse_args(argv))
    return report(lambda: convert(args.pop("checkpoint"), args.pop("output"), **args))


def report(convert_call) -> int:
    """Runs a converter's ``convert_call()`` for its command line: prints the directory it
    wrote (exit status 0) or the ConversionError (status 2)."""
    try:
        out = convert_call()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
