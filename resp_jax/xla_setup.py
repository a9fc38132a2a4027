"""XLA flags resp_jax sets before JAX starts a backend (imported by ``resp_jax/__init__``).

On CPU, XLA compiles convolutions into YNNPACK fusions by default (jaxlib 0.10). Their weight
gradients are slow for CNN6's shapes: block 2's (64 -> 128 channels, 32 x 125) ran at 35
GFLOP/s on the 2-core benchmark machine, against 178 GFLOP/s for XLA's Eigen convolution
and 180 for PyTorch (oneDNN). Turning that one fusion kind off (YNNPACK keeps the dots,
reductions and elementwise fusions) took the SupCon step (batch 32) from 7.9 to 5.7 s,
from 0.72 to 1.03 times PyTorch's speed (docs/benchmarks.md). GPUs are unaffected: the flag
is read by the CPU backend only.

The flag is appended to ``XLA_FLAGS`` unless the user already chose a YNNPACK setting there,
``RESP_JAX_XLA_CPU_TUNING=0`` is set, or the installed jaxlib is not a version the flag was
checked on (XLA aborts on flags it does not know). It only takes effect if no JAX backend has
started yet, which is why the package applies it at import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

OPT_OUT = "RESP_JAX_XLA_CPU_TUNING"
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"{YNN_FUSION_FLAG}=-individual_convolution",)
# jaxlib release series on which CPU_FLAGS exist and were measured (pyproject allows < 0.11).
CHECKED_JAXLIB = ((0, 10),)


def _jaxlib_series() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def tuned_flags(xla_flags: str, opt_out: str | None, jaxlib: tuple[int, int] | None) -> str:
    """``xla_flags`` with CPU_FLAGS appended where they apply (see the module docstring)."""
    if (opt_out or "").strip().lower() in ("0", "false", "no", "off"):
        return xla_flags
    if jaxlib not in CHECKED_JAXLIB or YNN_FUSION_FLAG in xla_flags:
        return xla_flags
    return " ".join([xla_flags.strip(), *CPU_FLAGS]).strip()


def configure() -> None:
    """Sets ``XLA_FLAGS`` for this process (a no-op when nothing changes)."""
    current = os.environ.get("XLA_FLAGS", "")
    wanted = tuned_flags(current, os.environ.get(OPT_OUT), _jaxlib_series())
    if wanted != current:
        os.environ["XLA_FLAGS"] = wanted


class _BackendProbeFilter(logging.Filter):
    """JAX probes every backend it knows (TPU included) and logs each one this machine lacks
    at INFO ("Unable to initialize backend 'tpu'"); absl shows INFO, so every command printed
    it. Failures JAX raises are unaffected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO
                    and str(record.msg).startswith("Unable to initialize backend"))


def quiet_backend_probe() -> None:
    logger = logging.getLogger("jax._src.xla_bridge")
    if not any(isinstance(f, _BackendProbeFilter) for f in logger.filters):
        logger.addFilter(_BackendProbeFilter())
