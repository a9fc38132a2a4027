"""Integer codes for metadata fields, used as contrastive targets and in reports.

A head of M-SCL names a field. Base fields are the `Cycle` attributes below plus `label`;
a composite field joins base fields with '+' (e.g. 'sex+age_group', 'sex+age_group+label')
and is coded in mixed radix, first field most significant. Unknown values code as -1, and a
composite is unknown when any part is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from resp_jax.data import records

_VOCABS = {
    "sex": {records.ICBHI: ("M", "F"), records.SPRSOUND: ("M", "F")},
    "age_group": {records.ICBHI: ("adult", "child"), records.SPRSOUND: ("baby", "kid")},
    "device": {records.ICBHI: ("AKGC417L", "LittC2SE", "Litt3200", "Meditron")},
    "location": {
        records.ICBHI: ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr"),
        records.SPRSOUND: ("p1", "p2", "p3", "p4"),
    },
    "mode": {records.ICBHI: ("sc", "mc")},
    "diagnosis": {
        records.ICBHI: ("Healthy", "URTI", "COPD", "Asthma", "LRTI", "Bronchiectasis",
                        "Pneumonia", "Bronchiolitis"),
    },
}
BASE_FIELDS = ("label",) + tuple(_VOCABS)


def dataset_fields(dataset: str) -> tuple:
    """The base fields defined for ``dataset`` ('label' first)."""
    return tuple(f for f in BASE_FIELDS if f == "label" or dataset in _VOCABS[f])


def vocab(dataset: str, field: str) -> tuple:
    """The values of a base field, in code order."""
    if field == "label":
        return records.CLASSES[dataset]
    try:
        return _VOCABS[field][dataset]
    except KeyError:
        known = list(dataset_fields(dataset))
        raise KeyError(
            f"metadata field {field!r} is not defined for dataset {dataset!r}; "
            f"expected one of {known} or a '+'-joined composite of them") from None


def parts(field: str) -> tuple:
    return tuple(field.split("+"))


def num_values(dataset: str, field: str) -> int:
    """How many codes a (possibly composite) field has."""
    n = 1
    for p in parts(field):
        n *= len(vocab(dataset, p))
    return n


def value_names(dataset: str, field: str) -> list:
    """Human-readable name of every code of a (possibly composite) field."""
    names = [""]
    for p in parts(field):
        names = [f"{a}+{b}" if a else str(b) for a in names for b in vocab(dataset, p)]
    return names


def encode_base(dataset: str, field: str, value) -> int:
    """Code of one value of a base field; -1 when unknown (None)."""
    if value is None:
        return -1
    if field == "label":
        return int(value)
    v = vocab(dataset, field)
    try:
        return v.index(value)
    except ValueError:
        raise ValueError(f"{field}={value!r} is not one of {v} ({dataset})") from None


def encode(cycle: records.Cycle, field: str) -> int:
    """Code of a (possibly composite) field for one cycle; -1 when any part is unknown."""
    code = 0
    for p in parts(field):
        c = encode_base(cycle.dataset, p, getattr(cycle, p))
        if c < 0:
            return -1
        code = code * len(vocab(cycle.dataset, p)) + c
    return code


def combine(dataset: str, field: str, base_codes: dict) -> np.ndarray:
    """Composite codes from arrays of base codes (as stored in the prepared dataset)."""
    out = None
    unknown = None
    for p in parts(field):
        c = np.asarray(base_codes[p], dtype=np.int64)
        out = c if out is None else out * len(vocab(dataset, p)) + c
        unknown = (c < 0) if unknown is None else (unknown | (c < 0))
    return np.where(unknown, -1, out).astype(np.int32)


def check_fields(dataset: str, fields: Sequence[str]) -> None:
    """Fail fast, naming the field, when a config asks for a field the dataset lacks."""
    for f in fields:
        for p in parts(f):
            vocab(dataset, p)
