"""Training checkpoints with orbax: the only module that touches orbax for the train state.

A workdir holds two managers, each keeping one checkpoint:
  ckpt/last  the newest state (every epoch, and on SIGINT/SIGTERM mid-epoch): what resume reads;
  ckpt/best  the state at the epoch chosen by model selection.
A checkpoint is the train state (a pytree of arrays) plus a JSON `meta` record (epoch, position
inside the epoch, selection bookkeeping, ...). Orbax writes into a temporary directory and
renames it when complete, so a process killed mid-save leaves the previous checkpoint intact.
Saves are synchronous: when `save_*` returns, the checkpoint is on disk.
"""

from __future__ import annotations

import logging as py_logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class _QuietOrbax(py_logging.Filter):
    """Orbax logs every save step by step at INFO through absl; keep its warnings only."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


py_logging.getLogger("absl").addFilter(_QuietOrbax())

LAST = "last"
BEST = "best"


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: the target of a restore."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


class Checkpoints:
    """The 'last' and 'best' checkpoints of one run directory."""

    def __init__(self, workdir: str | os.PathLike):
        self.directory = Path(workdir).absolute() / "ckpt"
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                               enable_async_checkpointing=False)
        self._managers = {name: ocp.CheckpointManager(self.directory / name, options=options)
                          for name in (LAST, BEST)}

    def path(self, which: str = LAST) -> Path:
        return self.directory / which

    def latest_step(self, which: str = LAST) -> int | None:
        return self._managers[which].latest_step()

    def save(self, which: str, step: int, state: Any, meta: dict) -> None:
        """Writes ``state`` and ``meta`` as checkpoint ``step`` of ``which`` ('last'/'best').

        Saving a step that is already there is a no-op (a resumed run that redoes work
        reproduces it exactly); newer steps than ``step`` are removed first, so the kept
        checkpoint is always the one just written.
        """
        manager = self._managers[which]
        steps = manager.all_steps()
        if step in steps:
            return
        for newer in [s for s in steps if s > step]:
            manager.delete(newer)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta))
        if not manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax declined to save step {step} in {self.path(which)}")
        manager.wait_until_finished()

    def restore(self, which: str, target: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """``(state, meta)`` of checkpoint ``step`` (default: the newest), or None when there is
        none. ``target`` gives the structure, shapes, dtypes and shardings (see `abstract`)."""
        manager = self._managers[which]
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                  meta=ocp.args.JsonRestore())
        try:
            restored = manager.restore(step, args=args)
        except Exception as e:  # orbax raises many types; say which checkpoint failed
            raise RuntimeError(f"cannot restore checkpoint {self.path(which) / str(step)}: {e}. "
                               "It was written by a different config (model widths, method, "
                               "heads) or is damaged; use another workdir") from e
        return restored["state"], dict(restored["meta"])

    def meta(self, which: str = LAST, step: int | None = None) -> dict | None:
        """Only the JSON record of a checkpoint (no arrays read), or None when there is none."""
        manager = self._managers[which]
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_arrays(directory: str | os.PathLike, tree: Any) -> None:
    """Writes a pytree of arrays (converted weights) as one orbax checkpoint at ``directory``
    (which must not exist yet; callers write into a temporary directory and rename it)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), tree)


def restore_arrays(directory: str | os.PathLike) -> Any:
    """The pytree written by `save_arrays` (numpy arrays on the host). Any orbax failure is a
    ValueError naming the directory."""
    directory = Path(directory).absolute()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(directory)
    except Exception as e:  # orbax raises many types; name the directory
        raise ValueError(f"{directory}: cannot read the orbax checkpoint: {e}") from e
