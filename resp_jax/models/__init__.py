"""Flax models, loaded by name (the config's ``model.name``)."""

from __future__ import annotations

from typing import Any

from resp_jax.models import cnn6

MODELS = {"cnn6": cnn6.Model}


def get_model(name: str, **kw: Any):
    """An unbound model of architecture ``name`` built with keyword fields ``kw``."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None
    return cls(**kw)
