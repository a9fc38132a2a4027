"""Integer codes for metadata fields, used as contrastive targets and in reports.

A head of M-SCL names a field. Base fields are 'label' plus the metadata fields of the
dataset's `Schema`; a composite field joins base fields with '+' (e.g. 'sex+age_group',
'sex+age_group+label') and is coded in mixed radix, first field most significant. Unknown
values code as -1, and a composite is unknown when any part is.

ICBHI and SPRSound have fixed class names and vocabularies (below). A manifest dataset's come
from its CSV (`manifest.describe`): `configuration.resolve` writes them into ``data.classes``
and ``data.fields``, so `config.json` records the codes a run used, and `schema(config.data)`
gives every consumer the same `Schema` for any dataset.
"""

from __future__ import annotations

import dataclasses
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
# The `Cycle` attributes ICBHI and SPRSound fill, and the codes their prepared copies hold.
BASE_FIELDS = ("label",) + tuple(_VOCABS)
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


@dataclasses.dataclass(frozen=True)
class Schema:
    """What the codes of a dataset mean: class names in label order, and the values of every
    metadata field in code order."""
    dataset: str
    classes: tuple
    vocabs: tuple   # ((field, (value, ...)), ...): the metadata fields, in order

    @property
    def fields(self) -> tuple:
        """The base fields defined for the dataset ('label' first)."""
        return ("label",) + tuple(f for f, _ in self.vocabs)

    @property
    def stored_fields(self) -> tuple:
        """The base fields a prepared copy holds codes of (ICBHI and SPRSound: all of
        `BASE_FIELDS`, -1 where a dataset has none)."""
        return BASE_FIELDS if self.dataset in records.CLASSES else self.fields

    def vocab(self, field: str) -> tuple:
        if field == "label":
            return self.classes
        for f, values in self.vocabs:
            if f == field:
                return values
        raise KeyError(
            f"metadata field {field!r} is not defined for dataset {self.dataset!r}; "
            f"expected one of {list(self.fields)} or a '+'-joined composite of them")

    def to_config(self) -> tuple:
        """``data.fields`` as `configuration.resolve` records it."""
        return tuple((f, tuple(v)) for f, v in self.vocabs)


def fixed_schema(dataset: str) -> Schema:
    """The schema of ICBHI or SPRSound (docs/method.md §1.1, §1.2)."""
    if dataset not in records.CLASSES:
        raise ValueError(f"dataset {dataset!r} has no fixed classes (a manifest's come from its "
                         "CSV: resolve the config, or pass the schema)")
    return Schema(dataset, records.CLASSES[dataset],
                  tuple((f, v[dataset]) for f, v in _VOCABS.items() if dataset in v))


def schema(spec) -> Schema:
    """The `Schema` of a dataset name (ICBHI, SPRSound), a `Schema`, or a config's ``data``
    section (``data.classes`` and ``data.fields`` as `configuration.resolve` fills them; runs
    recorded before they existed fall back to the dataset's fixed schema)."""
    if isinstance(spec, Schema):
        return spec
    if isinstance(spec, str):
        return fixed_schema(spec)
    classes, fields = spec.get("classes"), spec.get("fields")
    if not classes:
        return fixed_schema(spec["name"])
    return Schema(spec["name"], tuple(classes),
                  tuple((f, tuple(v)) for f, v in (fields or ())))


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
