"""resp_jax.xla_setup: the XLA:CPU convolution setting applied when resp_jax is imported."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from resp_jax import xla_setup

FLAG = xla_setup.CPU_FLAGS[0]
CHECKED = xla_setup.CHECKED_JAXLIB[0]

# A CNN6-sized convolution and its weight gradient; prints how XLA:CPU compiled them.
PROBE = """
import resp_jax, jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
grad = jax.jit(jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2)))
text = grad.lower(jnp.ones((5, 5, 64, 128)), jnp.ones((2, 16, 20, 64))).compile().as_text()
print("ynn" if "__ynn_fusion" in text else "plain")
"""


@pytest.mark.parametrize("given, opt_out, jaxlib, expected", [
    ("", None, CHECKED, FLAG),
    ("--xla_force_host_platform_device_count=2", "1", CHECKED,
     f"--xla_force_host_platform_device_count=2 {FLAG}"),
    (FLAG, None, CHECKED, FLAG),  # idempotent
    # The user's own YNNPACK choice wins; opting out, or an unchecked jaxlib, changes nothing.
    ("--xla_cpu_experimental_ynn_fusion_type=", None, CHECKED,
     "--xla_cpu_experimental_ynn_fusion_type="),
    ("--foo", "0", CHECKED, "--foo"),
    ("--foo", "off", CHECKED, "--foo"),
    ("--foo", None, (0, 9), "--foo"),
    ("--foo", None, None, "--foo"),
])
def test_tuned_flags(given, opt_out, jaxlib, expected):
    assert xla_setup.tuned_flags(given, opt_out, jaxlib) == expected


def _probe(**env):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


@pytest.mark.skipif(xla_setup._jaxlib_series() not in xla_setup.CHECKED_JAXLIB,
                    reason="the flag is only applied on the jaxlib series it was checked on")
def test_importing_resp_jax_keeps_convolutions_off_ynnpack():
    """Importing resp_jax compiles CPU convolutions (and their gradients) with XLA's own
    convolution; without the setting this jaxlib makes them YNNPACK fusions (the slow path)."""
    assert FLAG in os.environ["XLA_FLAGS"]  # conftest imported resp_jax before JAX started
    assert jax.devices()[0].platform == "cpu"
    assert _probe() == "plain"
    assert _probe(**{xla_setup.OPT_OUT: "0"}) == "ynn"
