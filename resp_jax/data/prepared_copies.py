"""The prepared copies on disk: the key that names a root's copy, the root each copy came from,
and removal of the copies a newer key replaced.

Every change under a data root makes a new copy (the key is a fingerprint of its files), so
without housekeeping old copies pile up. A copy records its root and its preparation (the
resampler and fades, `preparation_key`) in the TFDS metadata; only copies of the same
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

from resp_jax.data import audio, manifest, metadata, records

DEFAULT_DATA_DIR = "~/.cache/resp_jax/tfds"
FORMAT_VERSION = "1.1.0"   # bump when what a prepared example holds (or its order) changes
BUILDER_PREFIX = "resp_jax_"  # TFDS builder name (and folder under data_dir): prefix + dataset


def schema_json(schema) -> str:
    """A manifest copy's classes and field values as its metadata records them (they fix
    its codes, so they are part of its key)."""
    return json.dumps({"classes": list(schema.classes),
                       "fields": [[f, list(v)] for f, v in schema.vocabs]})


def schema_from_json(text: str):
    d = json.loads(text)
    return metadata.Schema(records.MANIFEST, tuple(d["classes"]),
                           tuple((f, tuple(v)) for f, v in d["fields"]))


def preparation_key(resampler: str, fade: str) -> str:
    """How a copy's audio was prepared (`audio.resample`'s resampler, `audio.cycles`' fades),
    as its metadata records it and its key includes it."""
    return f"{resampler}/{fade}"


def fingerprint(dataset: str, root, exclude=None, schema=None, audio_key: str = "") -> str:
    """A short hash of the dataset, the prepared format, the preparation ``audio_key``
    (`preparation_key`) and every file under ``root`` (relative path, size, mtime), leaving
    out the directory ``exclude`` (a cache inside it). A manifest's: its CSV's content, the
    size and mtime of every audio file it names, and the ``schema`` (classes and field
    values) its codes follow."""
    root = Path(root)
    skip = os.path.realpath(exclude) if exclude else None
    h = hashlib.sha256(f"{dataset}|{FORMAT_VERSION}|{audio.SAMPLE_RATE}|{audio.FADE}|"
                       f"{audio_key}".encode())
    if dataset == records.MANIFEST:
        h.update(root.read_bytes())
        for path in manifest.audio_paths(root):
            try:
                st = os.stat(path)
                h.update(f"\n{path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"\n{path}\tmissing".encode())
        h.update(("\n" + (schema_json(schema) if schema else "")).encode())
        return h.hexdigest()[:20]
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.realpath(os.path.join(dirpath, d)) != skip)
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            entries.append(f"{os.path.relpath(full, root)}\t{st.st_size}\t{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode() + b"\n")
    return h.hexdigest()[:20]


def data_dir_path(data_dir=None) -> str:
    return os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR))


def config_name(dataset: str, root, data_dir=None, schema=None, audio: str = "") -> str:
    """The builder config name (folder) of ``root``'s current copy prepared as ``audio``
    (`preparation_key`)."""
    return "r" + fingerprint(dataset, root, exclude=data_dir_path(data_dir), schema=schema,
                             audio_key=audio)


@dataclasses.dataclass(frozen=True)
class Copy:
    """One finished prepared copy: ``<data_dir>/resp_jax_<dataset>/<config>/<version>``."""
    dataset: str
    path: Path
    root: str | None   # None: no root recorded (not made by resp_jax's builder)
    size: int          # bytes
    schema: str | None = None  # a manifest copy's `schema_json`
    audio: str | None = None   # its `preparation_key` (None: made before it was recorded)

    @property
    def config(self) -> str:
        return self.path.parent.name

    @property
    def version(self) -> str:
        return self.path.name


def copies(data_dir=None) -> list:
    """Every finished copy under ``data_dir``; copies still being written are left out."""
    found = []
    for dataset in records.DATASETS:
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


def remove_older(dataset: str, root, keep, data_dir=None, schema=None, audio=None) -> list:
    """Removes the copies of ``dataset`` made from ``root`` (with the same ``schema``, a
    manifest's `schema_json`, and the same preparation ``audio`` or none recorded) other than
    ``keep`` (the copy just prepared), logging each with its size; returns them."""
    keep = os.path.realpath(keep)
    older = [c for c in copies(data_dir) if c.dataset == dataset and c.root == str(root)
             and c.schema == schema and c.audio in (audio, None)
             and os.path.realpath(c.path) != keep]
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
        if c.audio is None:
            old.append(c)
            continue
        key = (c.dataset, c.root, c.schema, c.audio)
        if key not in current:
            try:
                current[key] = config_name(c.dataset, c.root, data_dir, schema=c.schema and
                                           schema_from_json(c.schema), audio=c.audio)
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
