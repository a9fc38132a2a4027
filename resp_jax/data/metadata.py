"""Integer codes for metadata fields, used as contrastive targets and in reports.

A head of M-SCL names a field. Base fields are 'label' plus the metadata fields of the
dataset's `Schema`; a composite field joins base fields with '+' (e.g. 'sex+age_group',
'sex+age_group+label') and is coded in mixed radix, first field most significant. Unknown
values code as -1, and a composite is unknown when any part is.

Each dataset's `Source` (`sources`) gives its classes and vocabularies: fixed (ICBHI,
SPRSound, ...) or read from its data (a manifest's CSV, `manifest.describe`).
`configuration.resolve` writes them into ``data.classes`` and ``data.fields``, so
`config.json` records the codes a run used, and `schema(config.data)` gives every consumer
the same `Schema` for any dataset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from resp_jax.data import records, sources
from resp_jax.data.sources import BASE_FIELDS, Schema, schema  # noqa: F401  (the API here)

# Pseudo-field: each patient of a split its own code (PAFA's patient ids, docs/method.md §10).
PATIENT = "patient"


def patient_codes(patients: Sequence[str]) -> np.ndarray:
    """int32 codes of patient ids (the order of their sorted ids); '' (unknown) is -1."""
    patients = np.asarray(list(patients), dtype=str)
    known = patients != ""
    codes = np.full(len(patients), -1, np.int32)
    if known.any():
        codes[known] = np.unique(patients[known], return_inverse=True)[1]
    return codes


def fixed_schema(dataset: str) -> Schema:
    """The fixed schema of a dataset (docs/method.md §1)."""
    return sources.get(dataset).schema()


def dataset_fields(dataset) -> tuple:
    """The base fields defined for ``dataset`` ('label' first)."""
    return schema(dataset).fields


def vocab(dataset, field: str) -> tuple:
    """The values of a base field, in code order."""
    return schema(dataset).vocab(field)


def parts(field: str) -> tuple:
    return tuple(field.split("+"))


def num_values(dataset, field: str) -> int:
    """How many codes a (possibly composite) field has."""
    n = 1
    for p in parts(field):
        n *= len(vocab(dataset, p))
    return n


def value_names(dataset, field: str) -> list:
    """Human-readable name of every code of a (possibly composite) field."""
    names = [""]
    for p in parts(field):
        names = [f"{a}+{b}" if a else str(b) for a in names for b in vocab(dataset, p)]
    return names


def value(cycle: records.Cycle, field: str):
    """A cycle's value of a base field: a manifest's columns live in ``cycle.extra``."""
    if cycle.extra:
        if field == "label":
            return cycle.label
        return dict(cycle.extra).get(field)
    return getattr(cycle, field)


def encode_base(dataset, field: str, value) -> int:
    """Code of one value of a base field; -1 when unknown (None)."""
    if value is None:
        return -1
    if field == "label":
        return int(value)
    v = vocab(dataset, field)
    try:
        return v.index(value)
    except ValueError:
        raise ValueError(f"{field}={value!r} is not one of {v} "
                         f"({schema(dataset).dataset})") from None


def encode(cycle: records.Cycle, field: str, spec=None) -> int:
    """Code of a (possibly composite) field for one cycle; -1 when any part is unknown.
    ``spec``: the schema (default: the cycle's dataset's fixed one)."""
    s = schema(spec if spec is not None else cycle.dataset)
    code = 0
    for p in parts(field):
        c = encode_base(s, p, value(cycle, p))
        if c < 0:
            return -1
        code = code * len(s.vocab(p)) + c
    return code


def combine(dataset, field: str, base_codes: dict) -> np.ndarray:
    """Composite codes from arrays of base codes (as stored in the prepared dataset)."""
    out = None
    unknown = None
    for p in parts(field):
        c = np.asarray(base_codes[p], dtype=np.int64)
        out = c if out is None else out * len(vocab(dataset, p)) + c
        unknown = (c < 0) if unknown is None else (unknown | (c < 0))
    return np.where(unknown, -1, out).astype(np.int32)


def check_fields(dataset, fields: Sequence[str]) -> None:
    """Fail fast, naming the field, when a config asks for a field the dataset lacks."""
    for f in fields:
        for p in parts(f):
            vocab(dataset, p)
