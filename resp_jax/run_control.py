"""Stopping a run cleanly: signals, NaN losses, and checks before resuming a workdir."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import jax
from absl import logging

from resp_jax import logging_utils


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or inf."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written (when there was something to save)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        logging.warning("received signal %d: saving a checkpoint, then exiting", signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# Fields a resumed run may change: they do not affect the results.
RESUME_MAY_CHANGE = ("train.log_every",)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config(workdir: Path, config, resuming: bool) -> None:
    """Writes config.json; a resumed run must have the same config as the one it resumes."""
    path = workdir / "config.json"
    current = json.loads(config.to_json())
    if resuming and path.exists():
        old, new = _flat(json.loads(path.read_text())), _flat(current)
        diff = sorted(k for k in old.keys() | new.keys()
                      if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE)
        if diff:
            raise ValueError(f"{workdir} holds a run with a different config (differs in "
                             f"{', '.join(diff)}); resume with the same config or use a new "
                             "--workdir")
    if jax.process_index() == 0:
        logging_utils.write_json(path, current)


def nonfinite(value: float, where: str, ckpts) -> NonFiniteLoss:
    """The error for a NaN/inf loss, naming the checkpoint that is kept."""
    step = ckpts.latest_step()
    kept = (f"the last good checkpoint is {ckpts.path()}/{step}" if step is not None
            else "no checkpoint had been written yet")
    return NonFiniteLoss(f"training loss became {value} {where}; stopping without saving "
                         f"({kept}). Lower train.lr or check the input data.")
