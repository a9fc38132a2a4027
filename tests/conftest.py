"""Shared test fixtures.

JAX is given two CPU devices for the whole session so the data-parallel tests can compare one
device with two; single-device tests use a one-device mesh.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import train_helpers

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests never touch a GPU
# One persistent compilation cache for the session: many tests (and the runs they start as
# child processes) compile the same tiny programs. Made once, by the process that is imported
# first (pytest-xdist's controller, or a plain run); its workers and children inherit the
# variable. A cache the caller names is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="resp_jax_tests_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

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


@pytest.fixture(scope="session")
def tiny_icbhi(tmp_path_factory):
    """A small synthetic ICBHI dataset in the real layout and its TFDS cache directory,
    shared by every test module (made once per session)."""
    from resp_jax.data import synthetic

    base = tmp_path_factory.getbasetemp() / "tiny_icbhi"
    root, tfds_dir = base / "root", base / "tfds"
    if not (base / "done").exists():
        synthetic.write_icbhi(root, recordings=train_helpers.TINY_RECORDINGS, seed=0)
        (base / "done").touch()
    return {"root": root, "tfds": tfds_dir}


@pytest.fixture(scope="session")
def trained_runs(tiny_icbhi, tmp_path_factory):
    """Two finished tiny runs on the tiny ICBHI dataset, made once per session:
    'mscl' (configs/mscl_device_location.py: three heads, linear evaluation) and
    'ce' (one stage, patient-disjoint validation split, so curves have train/val/test)."""
    from resp_jax import train

    base = tmp_path_factory.getbasetemp() / "trained_runs"
    runs = {}
    for key, name, overrides in (("mscl", "mscl_device_location", {}),
                                 ("ce", "ce", {"eval__selection": "val"})):
        workdir = base / key
        if not (workdir / "results.json").exists():
            config = train_helpers.tiny_config(name, epochs=2, **overrides)
            config.data.root = str(tiny_icbhi["root"])
            config.data.tfds_dir = str(tiny_icbhi["tfds"])
            train.train_and_evaluate(config, workdir)
        runs[key] = workdir
    return runs


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only when the -m expression names gpu (`pytest -m gpu`, as
    tools/gpu_check.sh does); otherwise they are deselected, whatever else -m says."""
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


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
