"""Converts a published BEATs checkpoint into a resp_jax BEATs encoder directory
(docs/method.md §10).

    python tools/convert_beats.py --checkpoint=BEATs_iter3_plus_AS2M.pt --output=DIR
    python tools/convert_beats.py --checkpoint=BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt \
        --output=DIR --drop_predictor

The published layout, and nothing else: a torch file holding a dict with exactly the keys
``cfg`` (the BEATsConfig fields, e.g. encoder_layers, encoder_embed_dim, deep_norm) and
``model`` (the state dict of microsoft/unilm's ``BEATs`` module: ``patch_embedding.weight``,
``layer_norm.*``, ``post_extract_proj.*``, ``encoder.pos_conv.0.{weight_g,weight_v,bias}``,
``encoder.layer_norm.*``, ``encoder.layers.N.{self_attn.*,self_attn_layer_norm.*,fc1.*,fc2.*,
final_layer_norm.*}``). The cfg is read as BEATsConfig reads it: the class's defaults, then
the file's values; the sizes come from it and every tensor's shape is checked against them.
A fine-tuned checkpoint (``finetuned_model`` true: the encoder fine-tuned on AudioSet with
a Linear(width, predictor_class) predictor on top, ``predictor.weight`` and
``predictor.bias``) is refused unless ``--drop_predictor`` is given: then its encoder is
converted (as fine-tuned) and the AudioSet predictor, which resp_jax's heads replace, is
left out, as the command prints and ``encoder.json`` records (``dropped``). Refused too:
missing, unknown, wrong-shaped or non-finite entries (the predictor's included), a layer
whose copy of the shared relative position bias differs from layer 0's, cfg values the
encoder does not implement (``layer_norm_first``, activations other than GELU), and
``--drop_predictor`` for a checkpoint without a predictor; DIR is then not created. DIR is
written atomically and read by ``resp_jax.models.beats.load_pretrained(DIR)``.

The weight-normalised position convolution keeps its two parameters (g and v), so fine-tuning
trains what the reference trains. torch is imported here and in tests only (the ``torch``
extra); the file is read with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_ast  # noqa: E402  (its state-dict checks and converted-directory helpers)
from convert_ast import ConversionError, check_entries  # noqa: E402,F401

from resp_jax.models import beats  # noqa: E402

EXPECTED = ("expected the published BEATs layout: a dict {'cfg': {...}, 'model': state dict} "
            "as microsoft/unilm's BEATs checkpoints (e.g. BEATs_iter3_plus_AS2M.pt) hold it")
# BEATsConfig's defaults (microsoft/unilm beats/BEATs.py:26-68), which a checkpoint's cfg
# updates.
REFERENCE_DEFAULTS = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False,
    "deep_norm": False, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
    "relative_position_embedding": False, "num_buckets": 320, "max_distance": 1280,
    "gru_rel_pos": False, "finetuned_model": False, "predictor_dropout": 0.1,
    "predictor_class": 527,
}
SHARED_BIAS = "self_attn.relative_attention_bias.weight"
PREDICTOR = ("predictor.weight", "predictor.bias")  # a fine-tuned model's AudioSet classifier


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the cfg as BEATsConfig resolves it, the state dict as float32 numpy arrays)."""
    checkpoint = convert_ast.torch_load(path, EXPECTED)
    if not isinstance(checkpoint, Mapping) or set(checkpoint) != {"cfg", "model"}:
        keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else None
        shown = f" with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}" if keys else ""
        raise ConversionError(f"{path}: holds a {type(checkpoint).__name__}{shown}; {EXPECTED}")
    cfg = checkpoint["cfg"]
    if not isinstance(cfg, Mapping) or not all(isinstance(k, str) for k in cfg):
        raise ConversionError(f"{path}: 'cfg' is a {type(cfg).__name__}, not a dict of "
                              f"BEATsConfig fields; {EXPECTED}")
    return ({**REFERENCE_DEFAULTS, **cfg},
            convert_ast.as_numpy(checkpoint["model"], path, EXPECTED))


def architecture(cfg: Mapping[str, Any], where: str,
                 drop_predictor: bool = False) -> dict[str, Any]:
    """The encoder fields (`beats.BEATsEncoder`) of a resolved cfg, checked; a fine-tuned
    cfg only with ``drop_predictor``, which a cfg without a predictor refuses."""
    problems = []
    if cfg["finetuned_model"] and not drop_predictor:
        problems.append("finetuned_model is true (an AudioSet-fine-tuned model with a "
                        "predictor); convert the self-supervised checkpoint, or pass "
                        "--drop_predictor to convert this one's encoder without its predictor")
    if drop_predictor and not cfg["finetuned_model"]:
        problems.append("--drop_predictor was given but finetuned_model is false: this "
                        "checkpoint has no predictor to drop (convert it without the flag)")
    arch = {k: cfg[v] for k, v in beats.SIZE_FIELDS.items()}
    arch.update({k: cfg[k] for k in beats.CFG_FIELDS})
    ints = ("width", "depth", "heads", "input_patch_size", "embed_dim", "encoder_ffn_embed_dim",
            "conv_pos", "conv_pos_groups", "num_buckets", "max_distance")
    problems += [f"{k} = {arch[k]!r} is not a positive int" for k in ints
                 if isinstance(arch[k], bool) or not isinstance(arch[k], int) or arch[k] <= 0]
    if not problems:
        try:
            beats.BEATsEncoder(**arch).check()
            if arch["width"] % arch["conv_pos_groups"]:
                raise ValueError(f"width {arch['width']} is not divisible by conv_pos_groups "
                                 f"{arch['conv_pos_groups']}")
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConversionError(f"{where}: not a supported BEATs cfg: " + "; ".join(problems))
    return arch


def expected_entries(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Torch names and shapes of the BEATs module's state dict (layer 0's relative position
    bias; the other layers' copies of it are checked separately)."""
    w, e, p, f = arch["width"], arch["embed_dim"], arch["input_patch_size"], \
        arch["encoder_ffn_embed_dim"]
    heads, k = arch["heads"], arch["conv_pos"]
    out = {"patch_embedding.weight": (e, 1, p, p), "layer_norm.weight": (e,),
           "layer_norm.bias": (e,), "encoder.pos_conv.0.weight_g": (1, 1, k),
           "encoder.pos_conv.0.weight_v": (w, w // arch["conv_pos_groups"], k),
           "encoder.pos_conv.0.bias": (w,), "encoder.layer_norm.weight": (w,),
           "encoder.layer_norm.bias": (w,)}
    if arch["conv_bias"]:
        out["patch_embedding.bias"] = (e,)
    if e != w:
        out.update({"post_extract_proj.weight": (w, e), "post_extract_proj.bias": (w,)})
    for i in range(arch["depth"]):
        a = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out.update({f"{a}self_attn.{proj}.weight": (w, w), f"{a}self_attn.{proj}.bias": (w,)})
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            out.update({f"{a}{norm}.weight": (w,), f"{a}{norm}.bias": (w,)})
        out.update({f"{a}fc1.weight": (f, w), f"{a}fc1.bias": (f,), f"{a}fc2.weight": (w, f),
                    f"{a}fc2.bias": (w,)})
        if arch["gru_rel_pos"]:
            out.update({f"{a}self_attn.grep_linear.weight": (8, w // heads),
                        f"{a}self_attn.grep_linear.bias": (8,),
                        f"{a}self_attn.grep_a": (1, heads, 1, 1)})
    if arch["relative_position_embedding"]:
        out["encoder.layers.0." + SHARED_BIAS] = (arch["num_buckets"], heads)
    return out


def check_shared_bias(state: Mapping[str, np.ndarray], arch: Mapping[str, Any],
                      where: str) -> list[str]:
    """The other layers' copies of the relative position bias (the reference ties them to
    layer 0's; a checkpoint stores each): all equal to layer 0's, else refused."""
    copies = [f"encoder.layers.{i}.{SHARED_BIAS}" for i in range(1, arch["depth"])
              if f"encoder.layers.{i}.{SHARED_BIAS}" in state]
    if copies and not arch["relative_position_embedding"]:
        raise ConversionError(f"{where}: unknown {copies[0]} (relative_position_embedding is "
                              "false)")
    first = state.get("encoder.layers.0." + SHARED_BIAS)
    differ = [k for k in copies if first is None or state[k].shape != first.shape
              or not np.array_equal(state[k], first)]
    if differ:
        raise ConversionError(f"{where}: {', '.join(differ)} differ from layer 0's relative "
                              "position bias, which the reference shares across layers")
    return copies


def to_flax(state: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's ``{'params'}`` (numpy) from a checked state dict: conv kernels to flax's
    layouts, linear weights transposed, grep_a flattened to [heads]."""
    dense, norm = convert_ast._dense, convert_ast._norm

    def pair(name, fn):
        return fn(state[name + ".weight"], state[name + ".bias"])
    conv = {"kernel": np.ascontiguousarray(state["patch_embedding.weight"].transpose(2, 3, 1, 0))}
    if arch["conv_bias"]:
        conv["bias"] = state["patch_embedding.bias"]
    params: dict[str, Any] = {
        "patch_embedding": conv, "layer_norm": pair("layer_norm", norm),
        "encoder_layer_norm": pair("encoder.layer_norm", norm),
        "pos_conv": {"weight_v": np.ascontiguousarray(
                         state["encoder.pos_conv.0.weight_v"].transpose(2, 1, 0)),
                     "weight_g": state["encoder.pos_conv.0.weight_g"].reshape(-1),
                     "bias": state["encoder.pos_conv.0.bias"]}}
    if arch["embed_dim"] != arch["width"]:
        params["post_extract_proj"] = pair("post_extract_proj", dense)
    if arch["relative_position_embedding"]:
        params["relative_attention_bias"] = state["encoder.layers.0." + SHARED_BIAS]
    for i in range(arch["depth"]):
        a = f"encoder.layers.{i}."
        attn = {p: pair(f"{a}self_attn.{p}", dense)
                for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
        if arch["gru_rel_pos"]:
            attn["grep_linear"] = pair(f"{a}self_attn.grep_linear", dense)
            attn["grep_a"] = state[f"{a}self_attn.grep_a"].reshape(-1)
        params[f"layer{i}"] = {
            "self_attn": attn, "fc1": pair(a + "fc1", dense), "fc2": pair(a + "fc2", dense),
            "self_attn_layer_norm": pair(a + "self_attn_layer_norm", norm),
            "final_layer_norm": pair(a + "final_layer_norm", norm)}
    return {"params": params}


def convert(checkpoint: str | Path, output: str | Path, *, overwrite: bool = False,
            drop_predictor: bool = False, out=print) -> Path:
    """Checks ``checkpoint`` and writes the converted encoder to ``output``; nothing is
    written unless every check passes, and ``output`` appears only when complete.
    ``drop_predictor``: a fine-tuned checkpoint's encoder, its AudioSet predictor (checked,
    then left out) named through ``out``."""
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not empty "
                              "(choose another --output or pass --overwrite)")
    cfg, state = read_checkpoint(checkpoint)
    arch = architecture(cfg, str(checkpoint), drop_predictor)
    where = (f"{checkpoint} is not a BEATs state dict matching its cfg (width {arch['width']}, "
             f"depth {arch['depth']})")
    copies = check_shared_bias(state, arch, where)
    expected = expected_entries(arch)
    if drop_predictor:  # checked like every entry, then left out
        classes = cfg["predictor_class"]
        expected.update({PREDICTOR[0]: (classes, arch["width"]), PREDICTOR[1]: (classes,)})
    check_entries({k: v for k, v in state.items() if k not in copies}, expected, (), where)
    dropped = {k: list(state[k].shape) for k in PREDICTOR if drop_predictor}
    meta = {**arch, "cfg": cfg, "shared_bias_copies": len(copies),
            "source": {"layout": "beats", "converter": "tools/convert_beats.py",
                       "checkpoint": checkpoint.name, "sha256": convert_ast._sha256(checkpoint)},
            **({"dropped": dropped} if dropped else {})}
    try:
        written = beats.save_encoder(output, to_flax(state, arch), meta, overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        raise ConversionError(str(e)) from e
    if dropped:
        out(f"dropped the AudioSet predictor ({cfg['predictor_class']} classes): "
            + ", ".join(f"{k} {tuple(v)}" for k, v in dropped.items())
            + "; the encoder is converted as fine-tuned on AudioSet")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a BEATs checkpoint, e.g. BEATs_iter3_plus_AS2M.pt")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory to create for the converted encoder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory")
    parser.add_argument("--drop_predictor", action="store_true",
                        help="for a fine-tuned checkpoint (finetuned_model true): convert its "
                             "encoder and leave out its AudioSet predictor (predictor.weight, "
                             "predictor.bias)")
    args = parser.parse_args(argv)
    return convert_ast.report(lambda: convert(args.checkpoint, args.output,
                                              overwrite=args.overwrite,
                                              drop_predictor=args.drop_predictor))


if __name__ == "__main__":
    sys.exit(main())
