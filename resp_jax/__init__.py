"""resp_jax: supervised contrastive learning with patient metadata for respiratory sounds."""

__version__ = "0.1.0"
