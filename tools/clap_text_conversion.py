"""The text side of tools/convert_clap.py (docs/method.md §14): a ClapModel's text tower
(``text_model.*``: RoBERTa), its projection (``text_projection.linear{1,2}``), the logit
scales and the tokenizer, checked and mapped to `resp_jax.models.clap_text`.

config.json's ``text_config`` fills what it does not say with ClapTextConfig's defaults
(transformers/models/clap/configuration_clap.py:47-63), and takes ClapConfig's
``projection_dim`` / ``projection_hidden_act`` as ClapConfig itself does (:186-190).
Refused, naming the field or entry: activations other than exact GELU / ReLU, a decoder or
cross-attention, position embeddings other than absolute ones, buffers that differ from what
the tower recomputes (``position_ids`` 0, 1, ..., ``token_type_ids`` 0), a tokenizer whose
padding token is not the model's; q, k and v are fused into one qkv kernel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from convert_ast import ConversionError, _dense, _norm

from resp_jax.models import clap_text

TEXT = "text_model."
LOGIT_SCALES = ("logit_scale_a", "logit_scale_t")
# ClapTextConfig's defaults (transformers 5.x configuration_clap.py:47-63).
TEXT_DEFAULTS = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
    "layer_norm_eps": 1e-12, "projection_dim": 512, "pad_token_id": 1,
    "projection_hidden_act": "relu",
}


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The text config of a ClapModel's config.json, defaults filled in."""
    text = dict(config.get("text_config") or {})
    for key in ("projection_dim", "projection_hidden_act"):
        if key in config:
            text[key] = config[key]
    return {**TEXT_DEFAULTS, **text}


def architecture(text: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`clap_text.ARCH_FIELDS` of a resolved text config, checked."""
    problems = [f"{key} = {text[key]!r} (resp_jax implements {want!r})"
                for key, want in (("hidden_act", "gelu"), ("projection_hidden_act", "relu"))
                if text[key] != want]
    problems += [f"{key} = {text[key]!r} (resp_jax implements an encoder)"
                 for key in ("is_decoder", "add_cross_attention") if text.get(key)]
    if text.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type = {text['position_embedding_type']!r} "
                        "(resp_jax implements 'absolute')")
    arch = {k: text[k] for k in clap_text.ARCH_FIELDS}
    if not problems:
        try:
            clap_text.ClapTextEncoder(**arch).check()
        except (TypeError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise ConversionError(f"{where}: not a supported CLAP text config: "
                              + "; ".join(problems))
    return arch


def expected_entries(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Torch names and shapes of the text tower, its projection and the logit scales."""
    h, i, p = arch["hidden_size"], arch["intermediate_size"], arch["projection_dim"]
    e = TEXT + "embeddings."
    out = {e + "word_embeddings.weight": (arch["vocab_size"], h),
           e + "position_embeddings.weight": (arch["max_position_embeddings"], h),
           e + "token_type_embeddings.weight": (arch["type_vocab_size"], h),
           e + "LayerNorm.weight": (h,), e + "LayerNorm.bias": (h,),
           TEXT + "pooler.dense.weight": (h, h), TEXT + "pooler.dense.bias": (h,),
           "text_projection.linear1.weight": (p, h), "text_projection.linear1.bias": (p,),
           "text_projection.linear2.weight": (p, p), "text_projection.linear2.bias": (p,)}
    out.update({name: () for name in LOGIT_SCALES})
    for n in range(arch["num_hidden_layers"]):
        b = f"{TEXT}encoder.layer.{n}."
        for name, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                            ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                            ("intermediate.dense", (i, h)), ("output.dense", (h, i)),
                            ("attention.output.LayerNorm", (h,)), ("output.LayerNorm", (h,))):
            bias = shape[:1]
            out.update({b + name + ".weight": shape, b + name + ".bias": bias})
    return out


def check_buffers(buffers: Mapping[str, np.ndarray], arch, where: str) -> None:
    """The stored position ids must be 0, 1, ... and the token types 0: the tower computes
    RoBERTa's positions from the padding and uses token type 0."""
    n = arch["max_position_embeddings"]
    for key, want, what in ((TEXT + "embeddings.position_ids", np.arange(n)[None], "0, 1, ..."),
                            (TEXT + "embeddings.token_type_ids", np.zeros((1, n)), "zeros")):
        if key in buffers and (buffers[key].shape != want.shape
                               or not np.array_equal(buffers[key], want)):
            raise ConversionError(f"{where}: {key} differs from {what} [1, {n}], which "
                                  "resp_jax's text tower assumes")


def to_flax(state: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> dict[str, Any]:
    """The tower's ``{'params'}`` (numpy) from a checked state dict."""
    def pair(name, fn=_dense):
        return fn(state[name + ".weight"], state[name + ".bias"])
    e = TEXT + "embeddings."
    params: dict[str, Any] = {
        "word_embeddings": {"embedding": state[e + "word_embeddings.weight"]},
        "position_embeddings": {"embedding": state[e + "position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": state[e + "token_type_embeddings.weight"]},
        "embeddings_norm": pair(e + "LayerNorm", _norm), "pooler": pair(TEXT + "pooler.dense"),
        "projection1": pair("text_projection.linear1"),
        "projection2": pair("text_projection.linear2")}
    for n in range(arch["num_hidden_layers"]):
        b = f"{TEXT}encoder.layer.{n}."
        a = b + "attention.self."
        params[f"layer{n}"] = {
            "qkv": _dense(np.concatenate([state[a + k + ".weight"] for k in ("query", "key",
                                                                              "value")]),
                          np.concatenate([state[a + k + ".bias"] for k in ("query", "key",
                                                                            "value")])),
            "attn_out": pair(b + "attention.output.dense"),
            "attn_norm": pair(b + "attention.output.LayerNorm", _norm),
            "fc1": pair(b + "intermediate.dense"), "fc2": pair(b + "output.dense"),
            "out_norm": pair(b + "output.LayerNorm", _norm)}
    return {"params": params}


def tokenizer(directory: Path, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the tokenizer of ``directory`` as `tokenizers` JSON, its record for encoder.json),
    read with transformers' AutoTokenizer, as BTS reads it (``ClapProcessor.tokenizer``)."""
    import transformers

    needs = (f"{directory}: the text tower needs its tokenizer beside config.json "
             "(tokenizer.json, or vocab.json and merges.txt, as laion/clap-htsat-unfused ships "
             "them)")
    if not ((directory / "tokenizer.json").is_file()
            or all((directory / n).is_file() for n in ("vocab.json", "merges.txt"))):
        raise ConversionError(needs)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(directory))
        text = tok.backend_tokenizer.to_str()
    except Exception as e:  # OSError, ValueError, AttributeError (a tokenizer without backend)
        raise ConversionError(f"{needs}: {type(e).__name__}: {e}") from e
    record = {"class": type(tok).__name__, "pad_token_id": tok.pad_token_id,
              "vocab_size": len(tok), "special_tokens": tok.all_special_tokens}
    if tok.pad_token_id != arch["pad_token_id"] or len(tok) > arch["vocab_size"]:
        raise ConversionError(f"{directory}: the tokenizer (padding id {tok.pad_token_id}, "
                              f"{len(tok)} tokens) does not fit the text tower (pad_token_id "
                              f"{arch['pad_token_id']}, vocab_size {arch['vocab_size']})")
    json.loads(text)  # a tokenizers serialisation
    return text, record
