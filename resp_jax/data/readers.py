"""One entry point for every dataset reader: `read(dataset, root)`, `describe(dataset, root)`
(classes, fields and splits) and `read_annotation(path)` dispatch to the dataset's module. The checks the readers share live in
`wav_checks`, which imports no reader, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
import os

from resp_jax.data import icbhi, manifest, metadata, records, sprsound


def read(dataset: str, root, **kw) -> records.ReadResult:
    """Reads ``dataset`` ('icbhi', 'sprsound' or 'manifest') from its distributed files under
    ``root`` (a manifest: its CSV), with its split and class names filled in.

    Keyword arguments (``annotations_only``, ``skip_bad``; a manifest also takes ``schema``,
    ``classes`` and ``normal_class``) go to the dataset's reader.
    """
    if dataset == records.MANIFEST:
        return manifest.read(root, **kw)
    if dataset == records.ICBHI:
        result = icbhi.read(root, **kw)
    elif dataset == records.SPRSOUND:
        result = sprsound.read(root, **kw)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {records.DATASETS}")
    return dataclasses.replace(result, splits=records.SPLITS[dataset],
                               classes=records.CLASSES[dataset])


def describe(dataset: str, root, classes=None, normal_class=None) -> tuple:
    """``(metadata.Schema, splits, normal class)`` of a dataset: ICBHI's and SPRSound's are
    fixed (``classes`` and ``normal_class``, when given, must match them); a manifest's come
    from its CSV (`manifest.describe`). What `configuration.resolve` records in the config."""
    if dataset == records.MANIFEST:
        if not root:
            raise ValueError("config.data.root: data.name='manifest' needs the CSV, e.g. "
                             "--config.data.root=PATH/manifest.csv (README, \"Your own "
                             "recordings\")")
        schema, splits = manifest.describe(root, classes, normal_class)
        return schema, splits, schema.classes[0]
    schema = metadata.fixed_schema(dataset)
    if classes and tuple(classes) != schema.classes:
        raise ValueError(f"config.data.classes: {dataset}'s classes are fixed: {schema.classes}"
                         f", got {tuple(classes)}")
    if normal_class and normal_class != schema.classes[0]:
        raise ValueError(f"config.data.normal_class: {dataset}'s normal class is "
                         f"{schema.classes[0]!r}, got {normal_class!r}")
    return schema, records.SPLITS[dataset], schema.classes[0]


ANNOTATION_FORMATS = {".txt": records.ICBHI, ".json": records.SPRSOUND}


def read_annotation(path) -> tuple:
    """One recording's annotation file, ICBHI ``.txt`` or SPRSound ``.json`` (by extension):
    ``(dataset, [(start s, end s, label)], [dropped records.Skipped])``. Labels index
    ``records.CLASSES[dataset]``."""
    path = os.fspath(path)
    dataset = ANNOTATION_FORMATS.get(os.path.splitext(path)[1].lower())
    if dataset is None:
        raise records.DataError(path, "unknown annotation format; expected an ICBHI cycle "
                                      "file (.txt) or a SPRSound event file (.json)")
    if not os.path.isfile(path):
        raise records.DataError(path, "file not found; expected an annotation file")
    if dataset == records.ICBHI:
        return dataset, icbhi.read_annotation_file(path), []
    return (dataset, *sprsound.read_event_file(path))
