"""Converted encoders on disk: the directory format every backbone's converted weights share.

A converted encoder is a directory holding

  ``encoder.json``  format, architecture ('cnn6', 'ast') and its fields, provenance;
  ``state/``        an orbax checkpoint of the encoder's variables (``{'params'}``, plus
                    ``{'batch_stats'}`` for backbones with BatchNorm), float32.

A backbone module (`resp_jax.models.cnn6`, `resp_jax.models.ast`) checks its own fields and
shapes and calls `write` / `read_meta` / `read_state` here; the converters in tools/ write
through the backbone's ``save_encoder``. Orbax itself stays in `resp_jax.checkpoint`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

ENCODER_FORMAT = 1
META_FILE = "encoder.json"
STATE_DIR = "state"


def flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{'params/block0/fc1/kernel': leaf, ...}`` of a nested mapping."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


def differences(expected: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """Every missing / unexpected / wrong-shape entry of ``got`` against ``expected`` (a tree
    of anything with a ``shape``, e.g. ``jax.ShapeDtypeStruct``)."""
    want, have = flat(expected), flat(got)
    diffs = [f"missing {k} (shape {tuple(want[k].shape)})" for k in sorted(want.keys() - have)]
    diffs += [f"unexpected {k}" for k in sorted(have.keys() - want)]
    for k in sorted(want.keys() & have.keys()):
        shape = tuple(np.shape(have[k]))
        if shape != tuple(want[k].shape):
            diffs.append(f"{k}: shape {shape}, expected {tuple(want[k].shape)}")
    return diffs


def check_variables(expected: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    """ValueError ``what`` followed by every `differences` entry, if there is any."""
    diffs = differences(expected, got)
    if diffs:
        raise ValueError(f"{what}:\n  " + "\n  ".join(diffs))


def write(directory: str | os.PathLike, variables: Mapping[str, Any],
          record: Mapping[str, Any], *, overwrite: bool = False,
          extra: Callable[[Path], Any] | None = None) -> Path:
    """Writes ``variables`` (as float32) and the JSON ``record`` atomically to ``directory``.

    Everything goes to a temporary directory beside ``directory`` that is renamed into place,
    so a failure leaves nothing behind. An existing non-empty ``directory`` is an error unless
    ``overwrite``. The record is serialised before anything is written. ``extra(tmp)`` writes
    what else belongs in the directory (a tokenizer, a second tower) into the temporary one.
    """
    from resp_jax import checkpoint

    state = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32),
                         {k: variables[k] for k in variables})
    record = {**record, "format": ENCODER_FORMAT}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite and not (directory.is_dir()
                                                     and not any(directory.iterdir())):
        raise FileExistsError(f"{directory} already exists and is not empty "
                              "(choose another directory or overwrite it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        checkpoint.save_arrays(tmp / STATE_DIR, state)
        (tmp / META_FILE).write_text(text)
        if extra is not None:
            extra(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, old / directory.name)
            os.rename(tmp, directory)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | os.PathLike, architecture: str, tool: str) -> dict[str, Any]:
    """The JSON record of a converted ``architecture`` encoder (format and architecture
    checked; the backbone checks its own fields). ``tool`` names the converter in errors."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a converted {architecture.upper()} encoder: "
                                f"{path} not found (create one with {tool})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != ENCODER_FORMAT or meta.get("architecture") != architecture:
        raise ValueError(f"{path}: expected format {ENCODER_FORMAT} and architecture "
                         f"{architecture!r}, got format {meta.get('format')!r}, architecture "
                         f"{meta.get('architecture')!r}")
    return meta


def read_state(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(the state directory, its variables as numpy arrays) of a converted encoder."""
    from resp_jax import checkpoint

    state_dir = (Path(directory) / STATE_DIR).absolute()
    restored = checkpoint.restore_arrays(state_dir)
    return state_dir, {k: restored[k] for k in restored}
