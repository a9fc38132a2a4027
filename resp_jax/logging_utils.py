"""Run outputs: metrics.jsonl, TensorBoard scalars, JSON files, the terminal progress bar.

Only process 0 writes; other processes get writers that do nothing, so callers never branch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import jax
from absl import logging

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically (temporary file + rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_value(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the line valid
    return v


class MetricsLog:
    """metrics.jsonl (one JSON object per evaluation or logging window) and TensorBoard scalars.

    ``keep_lines`` truncates an existing metrics.jsonl to its first lines: a resumed run drops
    what was written after its checkpoint, so no evaluation appears twice.
    """

    def __init__(self, workdir: str | os.PathLike, keep_lines: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / METRICS_FILE
        self.lines = 0
        self._tb = None
        if not self.enabled:
            return
        old = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if len(old) < keep_lines:
            raise RuntimeError(f"{self.path} has {len(old)} lines but the checkpoint being "
                               f"resumed expects at least {keep_lines}: the workdir was altered")
        with open(self.path, "w") as f:
            f.writelines(old[:keep_lines])
        self.lines = keep_lines
        from flax.metrics import tensorboard  # imports TensorFlow: only when writing
        self._tb = tensorboard.SummaryWriter(str(Path(workdir) / TB_DIR))

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one evaluation (keys: epoch, stage, split, loss, sp, se, score, hs, ...)."""
        if not self.enabled:
            return
        record = {k: _json_value(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self.lines += 1
        for key, value in record.items():
            if key not in ("epoch", "stage", "split") and isinstance(value, (int, float)):
                self._tb.scalar(f"{record['stage']}/{record['split']}/{key}", value,
                                record["epoch"])

    def write_step(self, stage: str, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """Appends the step metrics of one logging window (every ``train.log_every`` steps):
        ``{"stage", "step", "epoch", "loss", "loss/<head>", "lr", "grad_norm", ...}``; in
        TensorBoard as ``<stage>/step/<key>`` over the global step."""
        if not self.enabled:
            return
        record = {"stage": stage, "step": int(step), "epoch": int(epoch),
                  **{k: _json_value(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self.lines += 1
        for key, value in values.items():
            self._tb.scalar(f"{stage}/step/{key}", value, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.enabled:
            self._tb.scalar(tag, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


class InputTimer:
    """Wraps a batch iterator and adds up the seconds its consumer waited for the next batch.

    The training loop dispatches steps without waiting for the device, so this is the time
    the input pipeline held the loop up; near zero means the pipeline keeps up."""

    def __init__(self, batches):
        self._batches = iter(batches)
        self.seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.seconds += time.perf_counter() - start


class Progress:
    """A tqdm bar per epoch with the running loss and samples/s (process 0, terminals only;
    elsewhere an absl log line every few updates)."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        from tqdm import tqdm
        self.enabled = jax.process_index() == 0
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
                         dynamic_ncols=True, disable=None if self.enabled else True)
        self._t0 = time.perf_counter()
        self._samples = 0
        self.desc = desc

    def update(self, steps: int, samples: int, loss: float) -> None:
        self._samples += samples
        rate = self._samples / max(time.perf_counter() - self._t0, 1e-9)
        if self._bar.disable:
            if self.enabled:
                logging.info("%s: step %d/%d loss %.4f, %.1f samples/s", self.desc,
                             self._bar.n + steps, self._bar.total, loss, rate)
            self._bar.n += steps
            return
        self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.1f}", refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        self._bar.close()
