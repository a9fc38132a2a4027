"""Backbones, loaded by name (the config's ``model.name``), and the model built from a config.

A backbone is a module in this package exposing
  ``encoder(config) -> nn.Module``: ``(x [batch, bins, frames], train, mask) -> [batch, D]``;
  ``pretrained(config, input_shape) -> variables | None``: the converted weights named by
      ``model.init_from`` (checked against the config), or None to train from scratch;
  optionally ``resolve(config)``: fills the backbone's config placeholders when a run starts.
Adding one is a new file here plus an entry in `BACKBONES`; heads, losses and the loop are
shared (`resp_jax.models.heads`).
"""

from __future__ import annotations

from types import ModuleType

import jax.numpy as jnp

from resp_jax.models import ast, beats, cnn6, heads, htsat

BACKBONES: dict[str, ModuleType] = {"cnn6": cnn6, "ast": ast, "beats": beats, "htsat": htsat}
DTYPES = ("float32", "bfloat16")  # model.dtype: the compute dtype (parameters stay float32)


def backbone(name: str) -> ModuleType:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"config.model.name must be one of {tuple(BACKBONES)}, "
                         f"got {name!r}") from None


def build_model(config, num_classes: int, head_names=None, prompts=None) -> heads.Model:
    """The unbound model of ``config``: its backbone's encoder, the classifier and one
    projector per contrastive head (``head_names``; default: the fields of loss.heads, none
    for 'ce'); method 'bts' adds the text tower reading ``prompts`` (`resp_jax.bts`)."""
    if head_names is None:
        head_names = (() if config.method in ("ce", "linear_probe", "bts")
                      else tuple(f for f, _ in config.loss.heads))
    text = None
    if config.method == "bts":
        from resp_jax import bts
        if prompts is None:
            raise ValueError("method 'bts' builds its text side from the run's prompts "
                             "(resp_jax.bts.prompts)")
        text = bts.PromptText(tower=bts.text_tower(config), prompts=prompts)
    return heads.Model(encoder=backbone(config.model.name).encoder(config), text=text,
                       num_classes=num_classes, heads=tuple(head_names),
                       proj_hidden=config.model.proj_hidden, proj_out=config.model.proj_out,
                       dtype=jnp.dtype(config.model.dtype),
                       proj_bn=bool(config.model.get("proj_bn", False)),
                       classifier_norm=bool(config.model.get("classifier_norm", False)),
                       proj_ln=bool(config.model.get("proj_ln", False)),
                       proj_pool=str(config.model.get("proj_pool", "mean")))
