"""One entry point for every dataset reader: `read(dataset, root)` and
`read_annotation(path)` dispatch to the dataset's module. The checks the readers share live in
`wav_checks`, which imports no reader, so there is no import cycle.
"""

from __future__ import annotations

import os

from resp_jax.data import icbhi, records, sprsound


def read(dataset: str, root, **kw) -> records.ReadResult:
    """Reads ``dataset`` ('icbhi' or 'sprsound') from its distributed files under ``root``.

    Keyword arguments (``annotations_only``, ``skip_bad``) go to the dataset's reader.
    """
    if dataset == records.ICBHI:
        return icbhi.read(root, **kw)
    if dataset == records.SPRSOUND:
        return sprsound.read(root, **kw)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {records.DATASETS}")


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
