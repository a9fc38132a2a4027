"""HF_Lung_V1 (Hsu et al., PLoS ONE 16(7): e0254134, 2021): ``data.name='hf_lung'``; each
labelled breathing phase is one unit, labelled from the adventitious-sound events it overlaps
(docs/method.md §1.4).

Layout (the official split): ``ROOT/train`` and ``ROOT/test`` (or the same under
``ROOT/HF_Lung_V1-master``, the repository's archive), each holding 15 s recordings
``<stem>.wav`` and their labels ``<stem>_label.txt``. A label line is ``TYPE START END``
(whitespace separated, times ``HH:MM:SS.fff``), TYPE one of ``I`` (inhalation), ``E``
(exhalation), ``Wheeze``, ``Stridor``, ``Rhonchi`` (continuous adventitious sounds, CAS) and
``D`` (discontinuous adventitious sounds, DAS: crackles). Stems are ``steth_<date>_<time>``
or ``trunc_<date-time>-<channel>_<n>`` (segments of one longer recording session); the prefix
is recorded as ``device``. HF_Lung_V1 publishes no patient ids, so the ``patient`` of a unit
is its recording session (a ``trunc`` stem's date-time, a ``steth`` stem itself): the
validation carve keeps a session's segments together.

Each I or E label is a unit whose class is Normal, CAS, DAS or CAS & DAS: an event counts
for a phase when it overlaps at least half of the shorter of the two (`OVERLAP`). Quirks
handled here: labels are in any order (units follow their start); an empty label file is a
recording without units; a phase repeating the span of an earlier one (an I and an E on the
same times) or with end <= start is left out by rule and listed in ``dropped``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from absl import logging

from resp_jax.data import records, sources
from resp_jax.data.wav_checks import Problems, fit_to_recording

NAME = "hf_lung"
CLASSES = ("Normal", "CAS", "DAS", "CAS & DAS")   # normal first: Sp is its recall
SPLITS = ("train", "test")
PHASES = ("I", "E")
CAS = ("Wheeze", "Stridor", "Rhonchi")
DAS = ("D",)
DEVICES = ("steth", "trunc")   # the file-name prefixes
VOCABS = (("device", DEVICES),)
ARCHIVE_DIR = "HF_Lung_V1-master"
LABEL_SUFFIX = "_label.txt"
OVERLAP = 0.5   # an event counts when it covers this share of the shorter of phase and event
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_SESSION = {"trunc": re.compile(r"^trunc_(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})"),
            "steth": re.compile(r"^steth_.+$")}
_LINE = ("expected 'TYPE HH:MM:SS.fff HH:MM:SS.fff' with TYPE one of I, E, Wheeze, Stridor, "
         "Rhonchi, D")


def seconds(text: str) -> float:
    """``HH:MM:SS.fff`` -> seconds; ValueError when not such a time."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a time HH:MM:SS.fff")
    h, mi, s = m.groups()
    return 3600 * int(h) + 60 * int(mi) + float(s)


def session(stem: str) -> tuple:
    """``(device, recording session)`` of a stem; (None, stem) for another naming."""
    for device, pattern in _SESSION.items():
        m = pattern.match(stem)
        if m:
            return device, (f"trunc_{m.group(1)}" if device == "trunc" else stem)
    return None, stem


def label_of(phase: tuple, events: list) -> int:
    """The class index of a phase ``(start, end)`` from the adventitious ``events``
    ``[(type, start, end)]`` overlapping it (`OVERLAP`)."""
    start, end = phase
    found = set()
    for kind, a, b in events:
        overlap = min(end, b) - max(start, a)
        if overlap > 0 and overlap >= OVERLAP * min(end - start, b - a):
            found.add("CAS" if kind in CAS else "DAS")
    return CLASSES.index(" & ".join(c for c in ("CAS", "DAS") if c in found) or "Normal")


def _read_labels(path: Path, problems: Problems, dropped: list) -> Optional[list]:
    """``[(line, 'phase', start, end, label)]`` of one label file's phases sorted by start
    (`wav_checks.fit_to_recording`'s units); None when the file is unreadable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        problems.bad(path, f"not a readable UTF-8 text file ({e}); {_LINE}")
        return None
    phases, events = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        f = line.split()
        if not f:
            continue
        try:
            if len(f) != 3:
                raise ValueError(f"{len(f)} fields")
            if f[0] not in PHASES + CAS + DAS:
                raise ValueError(f"unknown type {f[0]!r}")
            start, end = seconds(f[1]), seconds(f[2])
        except ValueError as e:
            problems.bad(path, f"malformed label line {line.strip()!r} ({e}); {_LINE}", number)
            continue
        if end <= start:
            dropped.append(records.Skipped(str(path), f"{f[0]} {f[1]}-{f[2]} has end <= start; "
                                                      "left out (docs/method.md §1.4)", number))
        elif f[0] in PHASES:
            phases.append((number, start, end))
        else:
            events.append((f[0], start, end))
    out, seen = [], {}
    for number, start, end in sorted(phases, key=lambda p: (p[1], p[0])):
        if (start, end) in seen:
            dropped.append(records.Skipped(
                str(path), f"phase {start:.3f}-{end:.3f} s repeats the span of line "
                           f"{seen[(start, end)]}; left out (docs/method.md §1.4)", number))
            continue
        seen[(start, end)] = number
        out.append((number, "phase", start, end, label_of((start, end), events)))
    return out


def read_label_file(path) -> tuple:
    """``([(start s, end s, label)], [dropped])`` of one ``<stem>_label.txt``: its phases
    sorted by start; `DataError` naming the file and line for anything malformed."""
    dropped: list = []
    phases = _read_labels(Path(path), Problems(skip_bad=False), dropped)
    return [(start, end, label) for _, _, start, end, label in phases], dropped


def split_dirs(root) -> dict:
    """``{split: folder}`` of an HF_Lung_V1 root; `DataError` naming what is missing."""
    root = Path(root)
    for base in (root, root / ARCHIVE_DIR):
        if all((base / s).is_dir() for s in SPLITS):
            return {s: base / s for s in SPLITS}
    raise records.DataError(root, f"no HF_Lung_V1 layout; expected {root}/train and "
                                  f"{root}/test (or under {ARCHIVE_DIR}/) holding <stem>.wav "
                                  f"and <stem>{LABEL_SUFFIX}")


def read(root, *, annotations_only: bool = False, skip_bad: bool = False,
         dropped: Optional[list] = None) -> records.ReadResult:
    """Every labelled phase of an HF_Lung_V1 root: train, then test, recordings by name.

    ``annotations_only`` leaves the WAV files alone (no clamping, ``wav_path`` ''). Bad input
    raises `DataError` naming the file and line; with ``skip_bad`` the bad line or recording
    is left out and listed in ``ReadResult.skipped``. Phases left out by rule are logged and
    appended to ``dropped`` when given.
    """
    root = Path(root)
    if not root.is_dir():
        raise records.DataError(root, "dataset root not found; expected the HF_Lung_V1 folder "
                                      "holding train/ and test/")
    problems = Problems(skip_bad)
    dropped_here: list = []
    cycles = []
    for split, folder in split_dirs(root).items():
        for path in sorted(folder.glob(f"*{LABEL_SUFFIX}")):
            stem = path.name[:-len(LABEL_SUFFIX)]
            units = _read_labels(path, problems, dropped_here)
            if not units:
                continue
            wav_path = ""
            if not annotations_only:
                fitted = fit_to_recording(folder / f"{stem}.wav", units, problems, path, "phase")
                if fitted is None:
                    continue
                wav_path, units = fitted
            device, patient = session(stem)
            cycles += [records.Cycle(
                dataset=NAME, split=split, stem=stem, wav_path=wav_path, index=k,
                patient=patient, start=start, end=end, label=label, label_name=CLASSES[label],
                device=device) for k, (_, _, start, end, label) in enumerate(units)]
    if dropped_here:
        logging.warning("HF_Lung: %d label(s) left out (docs/method.md §1.4), e.g. %s: %s",
                        len(dropped_here), dropped_here[0].path, dropped_here[0].reason)
        if dropped is not None:
            dropped.extend(dropped_here)
    return records.ReadResult(cycles=cycles, skipped=problems.skipped, splits=SPLITS,
                              classes=CLASSES)


class HfLungSource(sources.Source):
    """HF_Lung_V1's official split; its labelled breathing phases as units (§1.4)."""
    name, title = NAME, "HF_Lung_V1"
    classes, vocabs, splits, test_split = CLASSES, VOCABS, SPLITS, "test"
    # No published recipe classifies HF_Lung's phases: SPRSound's epochs (the larger set),
    # ICBHI's class weighting (most phases are normal).
    epochs, class_weighted = 200, True
    annotation_suffix = LABEL_SUFFIX
    inspect_fields = ("device",)
    dropped_note = "label(s) left out by docs/method.md §1.4 (end <= start, repeated span)"
    synthetic, synthetic_default = "resp_jax.data.synthetic.hf_lung:write_hf_lung", 60
    # Its classes are ICBHI's under other names (docs/method.md §13.2): CAS the continuous
    # adventitious sounds (ICBHI's wheeze), DAS the crackles.
    class_maps = {"icbhi": {"Normal": "normal", "CAS": "wheeze", "DAS": "crackle",
                            "CAS & DAS": "both"}}

    def read(self, root, *, annotations_only=False, skip_bad=False, schema=None, dropped=None):
        return read(root, annotations_only=annotations_only, skip_bad=skip_bad,
                    dropped=dropped)

    def read_annotation(self, path) -> tuple:
        return read_label_file(path)


SOURCE = HfLungSource()
