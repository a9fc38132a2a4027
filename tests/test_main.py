"""The command line as users type it: `python -m resp_jax.main --config=configs/mscl.py`."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from resp_jax import cli
from train_helpers import CONFIGS, ROOT, cli_overrides, tiny_config

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)


def test_run_directory_names():
    assert cli.config_name("configs/mscl.py") == "mscl"
    assert cli.config_name("configs/mscl.py:quick,sprsound") == "mscl-quick-sprsound"
    path = cli.default_workdir("configs/ce.py:quick", now=0)
    assert path.parent.as_posix() == "runs"
    assert re.fullmatch(r"ce-quick-\d{8}-\d{6}", path.name)
    assert re.fullmatch(r"ce-sweep-\d{8}-\d{6}",
                        cli.default_workdir("configs/ce.py", kind="sweep").name)


def test_summary_line_names_the_metrics_and_protocol():
    results = {"method": "mscl", "dataset": "sprsound", "selection": "val", "epoch": 7,
               "test_split": "inter_test",
               "test": {"sp": 90.0, "se": 80.0, "score": 85.0, "hs": 84.7,
                        "sprsound_score": 84.85}}
    line = cli.summary_line(results)
    assert line.startswith("test (inter_test): Sp 90.00  Se 80.00  Score 85.00  HS 84.70  "
                           "SPRSound score 84.85")
    assert "selection val, epoch 7" in line


def test_main_command_as_typed_makes_its_own_workdir(tmp_path):
    """`python -m resp_jax.main --config=configs/mscl.py` from a checkout (plus overrides that
    shrink the model and the epochs): no data root, so the synthetic default dataset is made
    (HOME points into tmp_path here), the run lands in runs/mscl-<time>/ and the test metrics
    are printed."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    config = tiny_config("mscl", epochs=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "resp_jax.main", "--config=configs/mscl.py"]
                          + cli_overrides(config), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthetic icbhi dataset (no data root given)" in done.stderr
    assert "Unable to initialize backend" not in done.stderr  # JAX's probe of absent TPUs
    assert (tmp_path / ".cache" / "resp_jax" / "synthetic").is_dir()
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and re.fullmatch(r"mscl-\d{8}-\d{6}", runs[0].name)
    results = json.loads((runs[0] / "results.json").read_text())
    assert re.search(r"test \(test\): Sp \d+\.\d\d  Se \d+\.\d\d  Score \d+\.\d\d", done.stdout)
    assert f"Score {results['test']['score']:.2f}" in done.stdout
    config_json = json.loads((runs[0] / "config.json").read_text())
    assert config_json["data"]["root"] == "" and config_json["train"]["epochs"] == 1
    assert (runs[0] / "metrics.jsonl").exists()


def test_main_rejects_stray_arguments_and_a_missing_config(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "resp_jax.main"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--config" in done.stderr
    done = subprocess.run([sys.executable, "-m", "resp_jax.main", f"--config={CONFIGS}/ce.py",
                           "extra"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "unexpected arguments" in done.stderr


def test_a_bad_config_value_is_one_line_without_a_traceback(tmp_path):
    """Config errors (here a misspelt head field) stop the run before any data is read."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "resp_jax.main",
                           f"--config={CONFIGS}/mscl_device_location.py",
                           f"--workdir={tmp_path / 'run'}",
                           "--config.loss.heads=(('label', 0.5), ('devise', 0.5))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: config.loss.heads: metadata field 'devise' is not defined for dataset " \
           "'icbhi'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "config.json").exists()
