"""Stopping a run cleanly: SIGINT/SIGTERM become a flag the loop checks, a NaN loss an error
naming the checkpoint that is kept."""

from __future__ import annotations

import signal
import threading

from absl import logging


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


def nonfinite(value: float, where: str, ckpts) -> NonFiniteLoss:
    """The error for a NaN/inf loss, naming the checkpoint that is kept."""
    step = ckpts.latest_step()
    kept = (f"the last good checkpoint is {ckpts.path()}/{step}" if step is not None
            else "no checkpoint had been written yet")
    return NonFiniteLoss(f"training loss became {value} {where}; stopping without saving "
                         f"({kept}). Lower train.lr or check the input data.")
