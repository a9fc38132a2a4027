"""The cycle record: what every stage after the readers may need to know about one cycle.

Each dataset's `Source` (`sources`; ICBHI's in `icbhi.py`, SPRSound's in `sprsound.py`, ...)
turns its distributed files into a list of `Cycle`s; everything later (TFDS builders,
pipeline, reports) reads these fields only. Class names, splits and metadata values are the
Source's.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


class DataError(ValueError):
    """Bad input in a dataset file. The message names the file (and line) and what was expected."""

    def __init__(self, path, reason: str, line: Optional[int] = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """One item a reader skipped because the config asked it to skip bad input."""
    path: str
    reason: str
    line: Optional[int] = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Cycle:
    """One annotated respiratory cycle (ICBHI, a manifest row), event (SPRSound) or breathing
    phase (HF_Lung): the unit a model classifies."""
    dataset: str            # the Source's name (data.name)
    split: str              # one of the Source's splits (a manifest: its CSV's split names)
    stem: str               # recording file name without extension
    wav_path: str           # path of the recording ('' when read with annotations only)
    index: int              # position of the cycle in its annotation file (after sorting)
    patient: str            # patient id as written in the stem
    start: float            # seconds from the start of the recording
    end: float              # seconds; may lie past the end of the audio (clamped when cut)
    label: int              # index into the dataset's classes (`metadata.schema`)
    label_name: str
    sex: Optional[str] = None        # 'M' or 'F'
    age: Optional[float] = None      # years
    age_group: Optional[str] = None  # ICBHI 'adult'/'child'; SPRSound 'baby'/'kid'
    device: Optional[str] = None     # recording device (ICBHI, HF_Lung)
    location: Optional[str] = None   # chest location (ICBHI Tc..Lr, SPRSound p1..p4)
    mode: Optional[str] = None       # ICBHI acquisition mode 'sc' / 'mc'
    diagnosis: Optional[str] = None  # ICBHI patient diagnosis
    # A manifest's metadata: ((column, value or None), ...) for every column besides the
    # required ones, plus 'age_group' derived from 'age'; the attributes above stay None.
    extra: tuple = ()

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclasses.dataclass
class ReadResult:
    """What a reader returns: the cycles, and every item it skipped (never dropped silently)."""
    cycles: list
    skipped: list = dataclasses.field(default_factory=list)
    splits: tuple = ()      # split names, 'train' first
    classes: tuple = ()     # class names in label order

    def split(self, name: str) -> list:
        return [c for c in self.cycles if c.split == name]
