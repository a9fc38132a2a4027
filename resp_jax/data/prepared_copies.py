"""The prepared copies on disk: the key that names a root's copy, the root each copy came from,
and removal of the copies a newer key replaced.

Every change under a data root makes a new copy (the key is a fingerprint of its files), so
without housekeeping old copies pile up. A copy records its root and its preparation (sample
rate; resampler and fades, `preparation_key`) in the TFDS metadata; only copies of the same
dataset, root and preparation are ever removed, never another root's, nor the same root's
other preparation (two recipes on one root keep one copy each).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from absl import logging

from resp_jax.data import audio, records, sources

DEFAULT_DATA_DIR = "~/.cache/resp_jax/tfds"
FORMAT_VERSION = "1.2.0"   # bump when what a prepared example holds (or its order) changes
BUILDER_PREFIX = "resp_jax_"  # TFDS builder name (and folder under data_dir): prefix + dataset


def schema_json(schema) -> str:
    """A copy's classes and field values as its metadata records them when they come from
    its data (a manifest's: they fix its codes, so they are part of its key)."""
    return schema.to_json()


def schema_from_json(text: str, dataset: str):
    return sources.Schema.from_json(dataset, text)


def preparation_key(resampler: str, fade: str) -> str:
    """How a copy's audio was prepared (`audio.resample`'s resampler, `audio.cycles`' fades),
    as its metadata records it and its key includes it."""
    return f"{resampler}/{fade}"


def fingerprint(dataset: str, root, exclude=None, schema=None,
                sample_rate: int = audio.SAMPLE_RATE, preparation: str = "") -> str:
    """A short hash of the dataset, the prepared format and what the dataset's `Source`
    keys its copy on (`Source.fingerprint`): by default every file under ``root`` (relative
    path, size, mtime), leaving out the directory ``exclude`` (a cache inside it); a
    manifest's: its CSV's content, the size and mtime of every audio file it names, and the
    ``schema`` (classes and field values) its codes follow. The cycles' ``sample_rate``
    (and so their 1/16 s fade) and their ``preparation`` (`preparation_key`) are
    part of it: each is a copy of its own."""
    fade = audio.fade_length(sample_rate)
    h = hashlib.sha256(f"{dataset}|{FORMAT_VERSION}|{int(sample_rate)}|{fade}|"
                       f"{preparation}".encode())
    sources.get(dataset).fingerprint(h, Path(root), exclude=exclude, schema=schema)
    return h.hexdigest()[:20]


def data_dir_path(data_dir=None) -> str:
    return os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR))


def config_name(dataset: str, root, data_dir=None, schema=None,
                sample_rate: int = audio.SAMPLE_RATE, preparation: str = "") -> str:
    """The builder config name (folder) of ``root``'s current copy at ``sample_rate``,
    prepared as ``preparation`` (`preparation_key`)."""
    return "r" + fingerprint(dataset, root, exclude=data_dir_path(data_dir), schema=schema,
                             sample_rate=sample_rate, preparation=preparation)


@dataclasses.dataclass(frozen=True)
class Copy:
    """One finished prepared copy: ``<data_dir>/resp_jax_<dataset>/<config>/<version>``."""
    dataset: str
    path: Path
    root: str | None   # None: no root recorded (not made by resp_jax's builder)
    size: int          # bytes
    schema: str | None = None  # its `schema_json`, when its schema comes from its data
    sample_rate: int = audio.SAMPLE_RATE  # of its cycles (recorded when not 16 kHz)
    preparation: str | None = None  # its `preparation_key` (None: made before it was recorded)

    @property
    def config(self) -> str:
        return self.path.parent.name

    @property
    def version(self) -> str:
        return self.path.name


def copies(data_dir=None) -> list:
    """Every finished copy under ``data_dir``; copies still being written are left out."""
    found = []
    for dataset in sources.NAMES:
        for info in sorted(Path(data_dir_path(data_dir), BUILDER_PREFIX + dataset)
                           .glob("*/*/dataset_info.json")):
            path = info.parent
            if "incomplete" in path.name or "incomplete" in path.parent.name:
                continue
            try:
                meta = json.loads((path / "metadata.json").read_text())
            except (OSError, ValueError):
                meta = {}
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            found.append(Copy(dataset, path, meta.get("root"), size, meta.get("schema"),
                              int(meta.get("sample_rate", audio.SAMPLE_RATE)),
                              meta.get("audio")))
    return found


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def remove(copy: Copy) -> None:
    """Deletes a copy (and its config folder once empty); a copy another process removed
    first is not an error."""
    shutil.rmtree(copy.path, ignore_errors=True)
    try:
        copy.path.parent.rmdir()
    except OSError:
        pass


def remove_older(dataset: str, root, keep, data_dir=None, schema=None,
                 sample_rate: int = audio.SAMPLE_RATE, preparation: str | None = None) -> list:
    """Removes the copies of ``dataset`` made from ``root`` (with the same ``schema``: the
    `schema_json` of one read from the data, ``sample_rate``, and ``preparation`` or none
    recorded) other than ``keep`` (the copy just prepared), logging each with its size;
    returns them."""
    keep = os.path.realpath(keep)
    older = [c for c in copies(data_dir) if c.dataset == dataset and c.root == str(root)
             and c.schema == schema and c.sample_rate == int(sample_rate)
             and c.preparation in (preparation, None) and os.path.realpath(c.path) != keep]
    for c in older:
        remove(c)
        logging.info("removed an older prepared copy of %s (%s): %s, %s", root, dataset,
                     c.path, human(c.size))
    return older


def stale(data_dir=None) -> tuple:
    """(stale, kept): copies replaced by their root's current key (or an older format, or
    made before copies recorded their preparation), and the ones kept, each kept one with
    why: current, or its root cannot be checked."""
    old, kept = [], []
    current = {}
    for c in copies(data_dir):
        if c.root is None:
            kept.append((c, "no root recorded"))
            continue
        if not os.path.exists(c.root):
            kept.append((c, "root not found"))
            continue
        if c.preparation is None:
            old.append(c)
            continue
        key = (c.dataset, c.root, c.schema, c.sample_rate, c.preparation)
        if key not in current:
            try:
                current[key] = config_name(c.dataset, c.root, data_dir, schema=c.schema and
                                           schema_from_json(c.schema, c.dataset),
                                           sample_rate=c.sample_rate,
                                           preparation=c.preparation)
            except records.DataError:
                current[key] = None
        if current[key] is None:
            kept.append((c, "root unreadable"))
            continue
        if c.config == current[key] and c.version == FORMAT_VERSION:
            kept.append((c, "current"))
        else:
            old.append(c)
    return old, kept


def clean(data_dir=None, dry_run: bool = False, out=print) -> list:
    """Lists (and unless ``dry_run`` removes) the stale copies under ``data_dir``."""
    old, kept = stale(data_dir)
    for c, why in kept:
        out(f"keep    {c.path}  {human(c.size)}  ({why}: {c.root})")
    for c in old:
        out(f"{'stale' if dry_run else 'removed'} {c.path}  {human(c.size)}  (from {c.root})")
        if not dry_run:
            remove(c)
    total = human(sum(c.size for c in old))
    out(f"{len(old)} stale prepared copies ({total})"
        + (" would be removed (--dry_run)" if dry_run else " removed") + f" in "
        f"{data_dir_path(data_dir)}")
    return old
