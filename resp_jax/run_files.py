"""The files a finished run leaves in its workdir (config.json, results.json) and how they are
read: a module of its own so that configuration (model.init_run) and finished_run both read
them without importing each other."""

import json
from pathlib import Path

import ml_collections

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {path.parent} is not a finished resp_jax run ({what} is "
            f"missing). Train first with python -m resp_jax.main --workdir={path.parent}; "
            "the same command finishes an interrupted run")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e


def run_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a finished run recorded (its config.json, with results.json beside
    it: the run ended)."""
    workdir = Path(workdir)
    config = read_json(workdir / CONFIG_FILE, "its config")
    read_json(workdir / RESULTS_FILE, "the results of the finished run")
    return ml_collections.ConfigDict(config)
