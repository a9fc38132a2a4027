"""Protocols (``data.protocol``, docs/method.md §13): their names, what one changes beside
the splits (`Protocol`, which `sources.Source.protocol` gives), and the choosing that
`Source.protocol_splits` does with them: selecting, relabelling and joining cycles, of
prepared splits (`prepare.Split`) or lists of `records.Cycle`s alike, and leaving one value
of a field (a recording device) out."""

from __future__ import annotations

import dataclasses

import numpy as np

OFFICIAL = "official"   # the protocol of the dataset's own published splits
LEAVE_DEVICE_OUT = "leave_device_out"  # leave-one-device-out (docs/method.md §13.1)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What a protocol changes beside the splits (`Source.protocol`)."""
    name: str = OFFICIAL
    classes: tuple = ()       # its class names, normal first; () = the dataset's
    held_out_field: str = ""  # a leave-one-value-out protocol: the field data.held_out names
    held_out_values: tuple = ()  # ... and the values it may name (a sweep's default)
    reads: tuple = ()         # the prepared splits it chooses from; () = the dataset's splits

    def test_split(self, held_out: str) -> str:
        """The split it reports by default ('' = the dataset's): a held-out value's own."""
        return f"{self.held_out_field}={held_out}" if self.held_out_field else ""


def values(split, field: str, vocab: tuple) -> list:
    """Each cycle's value of a base field (None unknown): a prepared split's codes named by
    ``vocab``, or a `Cycle` list's attributes."""
    if isinstance(split, list):
        return [getattr(c, field) for c in split]
    return [vocab[k] if k >= 0 else None for k in split.codes[field].tolist()]


def take(split, rows):
    """The cycles of ``split`` at ``rows``."""
    if isinstance(split, list):
        return [split[i] for i in rows]
    return split.take(rows)


def relabel(split, table):
    """``split`` with every label ``k`` replaced by ``table[k]`` (a protocol's classes)."""
    if isinstance(split, list):
        return [dataclasses.replace(c, label=table[c.label]) for c in split]
    labels = np.asarray([table[k] for k in split.codes["label"].tolist()], np.int32)
    return dataclasses.replace(split, codes={**split.codes, "label": labels.reshape(-1)})


def leave_one_out(splits: dict, field: str, held_out: str, known: tuple) -> dict:
    """``{'train', 'test'}``: every cycle (of every split) whose ``field`` is ``held_out``
    is a test cycle; the cycles of every other value train, less those of patients who also
    have a test cycle, so no patient is on both sides (docs/method.md §13.1). The cycles
    keep the order of ``splits`` (split by split)."""
    if held_out not in known:
        raise ValueError(f"config.data.held_out must be one of {known} (the {field} to "
                         f"hold out), got {held_out!r}")
    seen = [(split, values(split, field, known), _patients(split)) for split in splits.values()]
    tested = {p for _, vals, who in seen for p, v in zip(who, vals) if v == held_out} - {""}
    pieces = {"train": [], "test": []}
    for split, vals, who in seen:
        pieces["test"].append(take(split, [i for i, v in enumerate(vals) if v == held_out]))
        pieces["train"].append(take(split, [i for i, v in enumerate(vals)
                                            if v != held_out and who[i] not in tested]))
    return {k: concat(v) for k, v in pieces.items()}


def _patients(split) -> list:
    return [c.patient for c in split] if isinstance(split, list) else list(split.patient)


def concat(parts: list):
    """Splits (`prepare.Split`s, or `Cycle` lists) joined in order."""
    if all(isinstance(p, list) for p in parts):
        return [c for p in parts for c in p]

    def joined(field):
        values = [getattr(p, field) for p in parts]
        if values[0] is None:
            return None
        return np.concatenate(values) if isinstance(values[0], np.ndarray) else \
            [x for v in values for x in v]

    return dataclasses.replace(
        parts[0], codes={k: np.concatenate([p.codes[k] for p in parts]) for k in parts[0].codes},
        **{f: joined(f) for f in ("audio", "stem", "patient", "index", "start", "end")})
