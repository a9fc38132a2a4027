"""resp_jax: supervised contrastive learning with patient metadata for respiratory sounds."""

from resp_jax import xla_setup as _xla_setup

_xla_setup.configure()  # before any JAX backend starts (CPU convolution backend choice)
_xla_setup.quiet_backend_probe()

__version__ = "0.1.0"
