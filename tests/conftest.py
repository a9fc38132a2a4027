"""Shared test fixtures.

JAX is given two CPU devices for the whole session so the data-parallel tests can compare one
device with two; single-device tests use a one-device mesh.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests never touch a GPU

import resp_jax  # noqa: E402,F401  (sets XLA's CPU flags before JAX starts a backend)
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_platforms", "cpu")

# The real ICBHI files live in ../shared/data beside the checkout (CI always has them).
SHARED_DATA = Path(os.environ.get(
    "RESP_JAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; skips (with the reason) in a clone that lacks it."""
    if not (SHARED_DATA / "icbhi2017").is_dir():
        pytest.skip(f"real ICBHI files not found at {SHARED_DATA}/icbhi2017 "
                    "(set RESP_JAX_SHARED_DATA to run these tests)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def icbhi_real(shared_data) -> Path:
    return shared_data / "icbhi2017"


def pytest_sessionfinish(session, exitstatus):
    """In CI nothing may be skipped: a skip there means a missing input, so fail the run."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"CI: {skipped} test(s) skipped; CI requires every test to run.",
                            red=True)
        session.exitstatus = 1
