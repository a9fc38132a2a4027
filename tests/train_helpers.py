"""Tiny configs for the training tests (tests/test_train.py, test_parallel.py, ...)."""

import runpy
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY_RECORDINGS = 12
EXPERIMENTS = ("ce", "scl", "hybrid", "simclr", "scl_meta", "scl_composite", "mscl",
               "mscl_device_location")


def load_config(name: str, arg=None):
    """configs/<name>.py's get_config(arg), loaded by path as config_flags does."""
    return runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"](arg)


def tiny_config(name: str, *, batch_size=8, epochs=2, duration=1.0, **overrides):
    """An experiment config with tiny widths, short clips and few epochs."""
    config = load_config(name)
    config.model.channels = (4, 8, 8, 16)
    config.model.proj_hidden = 16
    config.model.proj_out = 8
    config.data.duration = duration
    config.train.batch_size = batch_size
    config.train.epochs = epochs
    config.train.log_every = 2
    config.linear_eval.epochs = 3
    config.linear_eval.batch_size = batch_size
    config.eval.batch_size = batch_size
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def _flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def cli_overrides(config, name="mscl"):
    """The --config.x.y=... flags that turn configs/<name>.py into ``config``."""
    default, wanted = _flat(load_config(name)), _flat(config)
    return [f"--config.{key}={value}" for key, value in sorted(wanted.items())
            if default.get(key) != value]
