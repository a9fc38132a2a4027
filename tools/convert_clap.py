"""Converts CLAP (Hugging Face layout) into a resp_jax HTS-AT encoder directory, with CLAP's
text tower beside it (docs/method.md §12, §14).

    python tools/convert_clap.py --checkpoint=clap-htsat-unfused/ --output=DIR

The layout transformers saves, and nothing else: a directory (or a weights file inside it)
holding ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` of ``ClapModel``
(model_type 'clap': the audio and text towers, e.g. the hub's ``laion/clap-htsat-unfused``)
or ``ClapAudioModelWithProjection`` (model_type 'clap_audio_model'). The audio tower
(``audio_model.audio_encoder.*``: bn0, patch embedding, Swin stages, final LayerNorm) and its
projection (``audio_projection.linear{1,2}``: BTS classifies its output) go to DIR; q, k and
v are fused into one qkv kernel. A ClapModel's text tower (``text_model.*``: RoBERTa), its
projection (``text_projection.*``), the logit scales and the tokenizer beside config.json go
to DIR/text (`tools/clap_text_conversion.py`; read by
``resp_jax.models.clap_text.load_pretrained``; BTS reads it). The buffers the towers
recompute (``relative_position_index``, ``num_batches_tracked``, the text ``position_ids``
and ``token_type_ids``) are checked against resp_jax's and listed under ``dropped``.
config.json fills what the file does not say with ClapAudioConfig's / ClapTextConfig's
defaults (transformers/models/clap/configuration_clap.py:47-63, 114-140). Refused, naming
the entry or field: a fused model (``enable_fusion``: resp_jax implements the unfused tower),
activations other than exact GELU / ReLU, a non-square or overlapping patch, a ClapModel
without its tokenizer, missing, unknown, wrong-shaped or non-finite entries. A
``preprocessor_config.json`` beside it is checked against resp_jax's CLAP front end
(``data.frontend='clap'``) and refused if it differs. DIR (with DIR/text) is written
atomically and read by ``resp_jax.models.htsat.load_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clap_text_conversion as text_side  # noqa: E402  (the text tower, tokenizer, scales)
import convert_ast  # noqa: E402  (state-dict reading and checks, converted-directory helpers)
from convert_ast import ConversionError, check_entries  # noqa: E402,F401

from resp_jax.data import htsat_frontends  # noqa: E402
from resp_jax.models import clap_text, htsat  # noqa: E402
from resp_jax.models.htsat_layers import relative_position_index  # noqa: E402

ENCODER = "audio_model.audio_encoder."
EXPECTED = ("expected a Hugging Face CLAP directory (config.json with model.safetensors or "
            "pytorch_model.bin) as transformers' ClapModel or ClapAudioModelWithProjection "
            "saves it, e.g. laion/clap-htsat-unfused")
# ClapAudioConfig's defaults (transformers 5.x configuration_clap.py:114-140).
AUDIO_DEFAULTS = {
    "window_size": 8, "num_mel_bins": 64, "spec_size": 256, "hidden_act": "gelu",
    "patch_size": 4, "patch_stride": [4, 4], "hidden_size": 768, "projection_dim": 512,
    "depths": [2, 2, 6, 2], "num_attention_heads": [4, 8, 16, 32], "enable_fusion": False,
    "hidden_dropout_prob": 0.1, "patch_embed_input_channels": 1, "flatten_patch_embeds": True,
    "patch_embeds_hidden_size": 96, "enable_patch_layer_norm": True, "drop_path_rate": 0.0,
    "attention_probs_dropout_prob": 0.0, "qkv_bias": True, "mlp_ratio": 4.0,
    "projection_hidden_act": "relu", "layer_norm_eps": 1e-5,
}
INT_BUFFERS = re.compile(r"^(audio_model\.audio_encoder\..*(relative_position_index|"
                         r"num_batches_tracked)|text_model\.embeddings\.(position_ids|"
                         r"token_type_ids))$")


def read_config(path: Path) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """(the audio config with ClapAudioConfig's defaults filled in, model_type, a ClapModel's
    text config with ClapTextConfig's, or None)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not readable JSON: {e}") from e
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "clap":
        audio = dict(config.get("audio_config") or {})
        # ClapConfig copies its own projection settings into the audio config.
        for key in ("projection_dim", "projection_hidden_act", "transformers_version"):
            if key in config:
                audio[key] = config[key]
    elif kind == "clap_audio_model":
        audio = dict(config)
    else:
        raise ConversionError(f"{path}: model_type {kind!r}; expected 'clap' (ClapModel) or "
                              f"'clap_audio_model' (ClapAudioModelWithProjection); {EXPECTED}")
    text = text_side.text_config(config) if kind == "clap" else None
    return {**AUDIO_DEFAULTS, **audio}, kind, text


def architecture(audio: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The encoder fields (`htsat.ARCH_FIELDS`) of a resolved audio config, checked."""
    problems = []
    for key, want in (("enable_fusion", False), ("hidden_act", "gelu"),
                      ("projection_hidden_act", "relu"), ("qkv_bias", True),
                      ("patch_embed_input_channels", 1), ("flatten_patch_embeds", True),
                      ("enable_patch_layer_norm", True)):
        if audio[key] != want:
            problems.append(f"{key} = {audio[key]!r} (resp_jax implements {want!r})")
    stride = audio["patch_stride"]
    stride = list(stride) if isinstance(stride, (list, tuple)) else [stride, stride]
    if len(set(stride)) != 1 or not isinstance(audio["patch_size"], int):
        problems.append(f"patch_size {audio['patch_size']!r} / patch_stride {stride} are not "
                        "square")
    depths, heads = list(audio["depths"]), list(audio["num_attention_heads"])
    arch = {"num_mel_bins": audio["num_mel_bins"], "spec_size": audio["spec_size"],
            "patch_size": audio["patch_size"], "patch_stride": stride[0],
            "embed_dim": audio["patch_embeds_hidden_size"], "depths": tuple(depths),
            "heads": tuple(heads), "window_size": audio["window_size"],
            "mlp_ratio": float(audio["mlp_ratio"]),
            "layer_norm_eps": float(audio["layer_norm_eps"]),
            "projection_dim": audio["projection_dim"], "tscam_classes": 0}
    width = arch["embed_dim"] * 2 ** (len(depths) - 1)
    if audio["hidden_size"] != width:
        problems.append(f"hidden_size {audio['hidden_size']} is not patch_embeds_hidden_size x "
                        f"2^(stages - 1) = {width}")
    if not problems:
        try:
            htsat.HTSATEncoder(**arch).check()
        except (TypeError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise ConversionError(f"{where}: not a supported CLAP audio config: "
                              + "; ".join(problems))
    return arch


def _blocks(arch):
    for s, depth in enumerate(arch["depths"]):
        for i in range(depth):
            yield s, i, arch["embed_dim"] * 2 ** s, arch["heads"][s]


def expected_entries(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Torch names and shapes of the audio tower and its projection."""
    e, p, mel, proj = arch["embed_dim"], arch["patch_size"], arch["num_mel_bins"], \
        arch["projection_dim"]
    width = e * 2 ** (len(arch["depths"]) - 1)
    out = {ENCODER + "patch_embed.proj.weight": (e, 1, p, p),
           ENCODER + "patch_embed.proj.bias": (e,)}
    for name, n in (("patch_embed.norm", e), ("norm", width), ("batch_norm", mel)):
        out.update({f"{ENCODER}{name}.weight": (n,), f"{ENCODER}{name}.bias": (n,)})
    out.update({ENCODER + "batch_norm.running_mean": (mel,),
                ENCODER + "batch_norm.running_var": (mel,),
                "audio_projection.linear1.weight": (proj, width),
                "audio_projection.linear1.bias": (proj,),
                "audio_projection.linear2.weight": (proj, proj),
                "audio_projection.linear2.bias": (proj,)})
    table = (2 * arch["window_size"] - 1) ** 2
    mlp = lambda d: int(d * arch["mlp_ratio"])  # noqa: E731
    for s, i, d, h in _blocks(arch):
        b = f"{ENCODER}layers.{s}.blocks.{i}."
        out[b + "attention.self.relative_position_bias_table"] = (table, h)
        for name, shape in (("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                            ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                            ("intermediate.dense", (mlp(d), d)), ("output.dense", (d, mlp(d)))):
            out.update({b + name + ".weight": shape, b + name + ".bias": shape[:1]})
        for norm in ("layernorm_before", "layernorm_after"):
            out.update({f"{b}{norm}.weight": (d,), f"{b}{norm}.bias": (d,)})
    for s in range(len(arch["depths"]) - 1):
        d = arch["embed_dim"] * 2 ** s
        m = f"{ENCODER}layers.{s}.downsample."
        out.update({m + "reduction.weight": (2 * d, 4 * d), m + "norm.weight": (4 * d,),
                    m + "norm.bias": (4 * d,)})
    return out


def read_state_dict(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(float tensors as float32 numpy, the integer buffers the encoder recomputes or the
    text tower holds: relative_position_index, num_batches_tracked, text position and token
    type ids). Any other integer tensor is refused."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            raw = load_file(str(path))
        except Exception as e:  # SafetensorError, OSError...
            raise ConversionError(f"{path}: not a readable safetensors file: "
                                  f"{type(e).__name__}: {e}") from e
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError... on other files
            raise ConversionError(f"{path}: not a state dict torch.load(weights_only=True) can "
                                  f"read ({type(e).__name__}); {EXPECTED}") from e
    buffers = {}
    if isinstance(raw, Mapping):
        for k in [k for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
                  and not v.is_floating_point() and INT_BUFFERS.match(k)]:
            buffers[k] = raw.pop(k).numpy()
    return convert_ast.as_numpy(raw, path, EXPECTED), buffers


def check_recomputed(buffers: Mapping[str, np.ndarray], arch, where: str) -> None:
    """Each stored relative_position_index must be the Swin index of the configured window
    (resp_jax recomputes it)."""
    want = relative_position_index(arch["window_size"])
    for key, value in buffers.items():
        if key.endswith("relative_position_index") and (
                value.shape != want.shape or not np.array_equal(value, want)):
            raise ConversionError(f"{where}: {key} differs from the Swin relative position "
                                  f"index of a {arch['window_size']} x {arch['window_size']} "
                                  "window")


def to_flax(state: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's ``{'params', 'batch_stats'}`` (numpy) from a checked state dict."""
    dense, norm = convert_ast._dense, convert_ast._norm

    def pair(name, fn=dense):
        return fn(state[name + ".weight"], state[name + ".bias"])
    g = ENCODER
    params: dict[str, Any] = {
        "bn0": {"scale": state[g + "batch_norm.weight"], "bias": state[g + "batch_norm.bias"]},
        "patch_embed": {"kernel": np.ascontiguousarray(
            state[g + "patch_embed.proj.weight"].transpose(2, 3, 1, 0)),
            "bias": state[g + "patch_embed.proj.bias"]},
        "patch_norm": pair(g + "patch_embed.norm", norm), "norm": pair(g + "norm", norm),
        "projection1": pair("audio_projection.linear1"),
        "projection2": pair("audio_projection.linear2")}
    for s, i, _, _ in _blocks(arch):
        b = f"{g}layers.{s}.blocks.{i}."
        a = b + "attention.self."
        qkv = dense(np.concatenate([state[a + n + ".weight"] for n in ("query", "key", "value")]),
                    np.concatenate([state[a + n + ".bias"] for n in ("query", "key", "value")]))
        params[f"stage{s}_block{i}"] = {
            "norm1": pair(b + "layernorm_before", norm), "norm2": pair(b + "layernorm_after", norm),
            "attn": {"qkv": qkv, "proj": pair(b + "attention.output.dense"),
                     "relative_position_bias_table": state[a + "relative_position_bias_table"]},
            "fc1": pair(b + "intermediate.dense"), "fc2": pair(b + "output.dense")}
    for s in range(len(arch["depths"]) - 1):
        m = f"{g}layers.{s}.downsample."
        params[f"merge{s}"] = {"norm": pair(m + "norm", norm),
                               "reduction": {"kernel": np.ascontiguousarray(
                                   state[m + "reduction.weight"].T)}}
    stats = {"bn0": {"mean": state[g + "batch_norm.running_mean"],
                     "var": state[g + "batch_norm.running_var"]}}
    return {"params": params, "batch_stats": stats}


def check_preprocessor(directory: Path) -> dict[str, Any] | None:
    """preprocessor_config.json (if present) against resp_jax's CLAP front end; refused if a
    setting differs. Returns it (provenance) or None."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        pre = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not readable JSON: {e}") from e
    ours = htsat_frontends.CLAP_EXTRACTOR
    differ = [f"{k} = {pre[k]!r} (resp_jax: {v!r})" for k, v in ours.items()
              if k in pre and pre[k] != v]
    if differ:
        raise ConversionError(f"{path}: a feature extractor resp_jax's data.frontend='clap' "
                              f"does not compute: {'; '.join(differ)}")
    return pre


def convert(checkpoint: str | Path, output: str | Path, *, overwrite: bool = False) -> Path:
    """Checks ``checkpoint`` and writes the converted audio tower to ``output``; nothing is
    written unless every check passes, and ``output`` appears only when complete."""
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not empty "
                              "(choose another --output or pass --overwrite)")
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    weights = ([checkpoint] if checkpoint.is_file()
               else [directory / n for n in convert_ast.HUB_WEIGHTS if (directory / n).is_file()])
    config_path = directory / "config.json"
    if not checkpoint.exists():
        raise ConversionError(f"{checkpoint}: no such file or directory")
    if not config_path.is_file() or not weights or weights[0].name not in convert_ast.HUB_WEIGHTS:
        found = sorted(p.name for p in directory.iterdir())[:20]
        raise ConversionError(f"{checkpoint}: needs config.json and one of "
                              f"{list(convert_ast.HUB_WEIGHTS)}; found {found}; {EXPECTED}")
    audio, kind, text = read_config(config_path)
    arch = architecture(audio, str(config_path))
    text_arch = None if text is None else text_side.architecture(text, str(config_path))
    preprocessor = check_preprocessor(directory)
    tokenizer = None if text is None else text_side.tokenizer(directory, text_arch)
    state, buffers = read_state_dict(weights[0])
    where = (f"{weights[0]} is not a CLAP {'ClapModel' if kind == 'clap' else 'audio model'} "
             f"matching {config_path.name} (depths {list(arch['depths'])}, embed "
             f"{arch['embed_dim']})")
    check_recomputed(buffers, arch, where)
    expected = expected_entries(arch)
    if text_arch is not None:
        text_side.check_buffers(buffers, text_arch, where)
        expected.update(text_side.expected_entries(text_arch))
    check_entries(state, expected, (), where)
    dropped = {k: list(v.shape) for k, v in buffers.items()}
    source = {"layout": "hub", "class": "ClapModel" if kind == "clap" else
              "ClapAudioModelWithProjection", "converter": "tools/convert_clap.py",
              "checkpoint": weights[0].name, "sha256": convert_ast._sha256(weights[0]),
              "config_sha256": convert_ast._sha256(config_path),
              "transformers_version": audio.get("transformers_version")}
    dropout = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    meta = {**arch, "source": source, "preprocessor": preprocessor,
            "dropped": {k: v for k, v in dropped.items() if k.startswith(ENCODER)},
            "regularisation": {k: audio[k] for k in dropout + ("drop_path_rate",)},
            "text": None if text is None else "text"}
    extra = None
    if text_arch is not None:
        text_meta = {**text_arch, "source": source, "tokenizer": tokenizer[1],
                     "dropped": {k: v for k, v in dropped.items() if not k.startswith(ENCODER)},
                     "regularisation": {k: text[k] for k in dropout},
                     **{k: float(state[k]) for k in text_side.LOGIT_SCALES}}
        extra = lambda tmp: clap_text.save_encoder(  # noqa: E731
            tmp / "text", text_side.to_flax(state, text_arch), text_meta, tokenizer[0])
    try:
        return htsat.save_encoder(output, to_flax(state, arch), meta, overwrite=overwrite,
                                  extra=extra)
    except (ValueError, FileExistsError) as e:
        raise ConversionError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a Hugging Face CLAP directory, e.g. clap-htsat-unfused/")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory to create for the converted encoder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory")
    args = parser.parse_args(argv)
    return convert_ast.report(lambda: convert(args.checkpoint, args.output,
                                              overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
