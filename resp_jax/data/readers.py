"""One entry point for every dataset reader: `read(dataset, root)`, `describe(dataset, root)`
(classes, fields and splits) and `read_annotation(path)`, each asking the dataset's `Source`
(`sources`). The checks the readers share live in `wav_checks`.
"""

from __future__ import annotations

import os

from resp_jax.data import records, sources


def read(dataset: str, root, **kw) -> records.ReadResult:
    """Reads ``dataset`` (a ``data.name``, `sources.NAMES`) from its distributed files under
    ``root`` (a manifest: its CSV), with its split and class names filled in.

    Keyword arguments (``annotations_only``, ``skip_bad``, ``dropped``; a manifest also takes
    ``schema``, ``classes`` and ``normal_class``) go to the dataset's `Source.read`.
    """
    return sources.get(dataset).read(root, **kw)


def describe(dataset: str, root, classes=None, normal_class=None) -> tuple:
    """``(metadata.Schema, splits, normal class)`` of a dataset: fixed (``classes`` and
    ``normal_class``, when given, must match), or read from its data (a manifest's CSV,
    `manifest.describe`). What `configuration.resolve` records in the config."""
    return sources.get(dataset).describe(root, classes, normal_class)


def read_annotation(path) -> tuple:
    """One recording's annotation file, in the format of the dataset whose annotation files
    end as its name does (ICBHI ``.txt``, SPRSound ``.json``, ...): ``(Source,
    [(start s, end s, label)], [dropped records.Skipped])``; labels index ``Source.classes``."""
    path = os.fspath(path)
    source = sources.by_annotation(path)
    if not os.path.isfile(path):
        raise records.DataError(path, "file not found; expected an annotation file")
    return (source, *source.read_annotation(path))
