"""resp_jax: supervised contrastive learning with patient metadata for respiratory sounds."""

from resp_jax import xla_setup as _xla_setup

_xla_setup.configure()  # before any JAX backend starts (CPU convolution backend choice)

__version__ = "0.1.0"
