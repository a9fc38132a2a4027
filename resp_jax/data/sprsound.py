"""SPRSound reader: the 2022 release (docs/method.md §1.2) to one `Cycle` per annotated event.

Two layouts are accepted: ``ROOT/{train_wav, train_json, test_wav, test_json}`` and
``ROOT/BioCAS2022/{train2022_wav, train2022_json, test2022_wav, test2022_json}`` (or ROOT
being the BioCAS2022 folder, or the organisers' repository, which also keeps it under
``releases/BioCAS2022``). A test recording is inter-patient when its JSON lies under
``inter_test_json`` and intra-patient under ``intra_test_json``. Stems are
``PATIENT_AGE_GENDER_LOCATION_REC`` with patient ids of varying length. Each JSON holds one
object whose ``event_annotation`` lists unsorted events with start/end as millisecond strings;
events are sorted by start and only those with end > start are kept (docs/method.md §1.2). The others
are not bad input, so they are not errors: they are logged, and listed in ``dropped`` when the
caller passes a list.

The prepared copy also holds one unit per recording (the whole recording, labelled with the
JSON's ``record_annotation``) in the splits ``<split>_records``, which only the record-level
challenge tasks read; the challenge tasks (``data.protocol``: task 1-1 binary, 1-2 the seven
event classes, 2-1 ternary and 2-2 the five record classes, docs/method.md §13.3) are
choices and relabellings of these splits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from absl import logging

from resp_jax.data import records, sources
from resp_jax.data.protocols import OFFICIAL, Protocol, relabel
from resp_jax.data.wav_checks import Problems, fit_to_recording

NAME = "sprsound"
# Event classes in label order (docs/method.md §1.2).
CLASSES = ("Normal", "Rhonchi", "Wheeze", "Stridor", "Coarse Crackle", "Fine Crackle",
           "Wheeze+Crackle")
SPLITS = ("train", "inter_test", "intra_test")
LOCATIONS = ("p1", "p2", "p3", "p4")
VOCABS = (("sex", ("M", "F")), ("age_group", ("baby", "kid")), ("location", LOCATIONS))

# (base folder relative to ROOT, train wav, train json, test wav, test json)
LAYOUTS = (
    ("", "train_wav", "train_json", "test_wav", "test_json"),
    ("BioCAS2022", "train2022_wav", "train2022_json", "test2022_wav", "test2022_json"),
    ("", "train2022_wav", "train2022_json", "test2022_wav", "test2022_json"),
    ("releases/BioCAS2022", "train2022_wav", "train2022_json", "test2022_wav", "test2022_json"),
)
TEST_FOLDERS = {"inter_test_json": "inter_test", "intra_test_json": "intra_test"}
EVENT_CLASSES = {name: i for i, name in enumerate(CLASSES)}
# Record-level classes in the organisers' numbering of task 2-2 (their baseline's
# task_22_dict: [sprs] scripts/train.py); a recording's unit is labelled with its
# ``record_annotation`` (the repository README's example calls the key
# ``recording_annotation``: both are read).
RECORD_CLASSES = ("Normal", "Poor Quality", "CAS", "DAS", "CAS & DAS")
RECORD_KEYS = ("record_annotation", "recording_annotation")
RECORDS = "_records"                   # suffix of the splits of whole recordings
RECORD_SPLITS = tuple(s + RECORDS for s in SPLITS)
# The challenge tasks (docs/method.md §13.3; [sprs] README "Main Tasks", scripts/train.py):
# name -> (classes, the prepared splits read, stored label -> task label).
TASKS = {
    "task1_1": (("Normal", "Adventitious"), SPLITS, (0, 1, 1, 1, 1, 1, 1)),
    "task1_2": (CLASSES, SPLITS, tuple(range(len(CLASSES)))),
    "task2_1": (("Normal", "Poor Quality", "Adventitious"), RECORD_SPLITS, (0, 1, 2, 2, 2)),
    "task2_2": (RECORD_CLASSES, RECORD_SPLITS, tuple(range(len(RECORD_CLASSES)))),
}
# SPRSound's event classes on ICBHI's and HF_Lung_V1's (docs/method.md §13.2): rhonchi and
# stridor are continuous adventitious sounds like wheezes (CAS), both crackles discontinuous
# (DAS), and Wheeze+Crackle is ICBHI's "both".
CLASS_MAPS = {
    "icbhi": {"Normal": "normal", "Rhonchi": "wheeze", "Wheeze": "wheeze", "Stridor": "wheeze",
              "Coarse Crackle": "crackle", "Fine Crackle": "crackle",
              "Wheeze+Crackle": "both"},
    "hf_lung": {"Normal": "Normal", "Rhonchi": "CAS", "Wheeze": "CAS", "Stridor": "CAS",
                "Coarse Crackle": "DAS", "Fine Crackle": "DAS", "Wheeze+Crackle": "CAS & DAS"},
}
BABY_AGE = 5.0     # baby if age < 5, kid otherwise (docs/method.md §1.2)
_GENDER = {"0": "M", "1": "F"}
_STEM_FORMAT = "PATIENT_AGE_GENDER_LOCATION_REC (e.g. 65109516_0.2_0_p1_3659)"
_JSON_FORMAT = ('expected one JSON object {"record_annotation": ..., "event_annotation": '
                '[{"start": "<ms>", "end": "<ms>", "type": "<class>"}, ...]}')


def parse_stem(stem: str, locations=LOCATIONS, anonymous: bool = False) -> dict:
    """Patient, age, sex, location and recording of a stem; ValueError saying what is wrong.
    ``anonymous`` accepts an empty patient id (the later releases' anonymised recordings)."""
    parts = stem.split("_")
    if len(parts) != 5:
        raise ValueError(f"file name {stem!r} is not {_STEM_FORMAT}")
    patient, age_s, gender, location, rec = parts
    try:
        age = float(age_s)
        if not (math.isfinite(age) and age >= 0):
            raise ValueError
    except ValueError:
        raise ValueError(f"file name {stem!r}: age {age_s!r} is not a number >= 0 "
                         f"(expected {_STEM_FORMAT})") from None
    if gender not in _GENDER:
        raise ValueError(f"file name {stem!r}: gender {gender!r} is not 0 (male) or 1 (female)")
    if location not in locations:
        raise ValueError(f"file name {stem!r}: location {location!r} is not one of {locations}")
    if not patient and not anonymous:
        raise ValueError(f"file name {stem!r} has an empty patient id")
    return dict(patient=patient, age=age, sex=_GENDER[gender], location=location,
                recording=rec)


def age_group(age: Optional[float]) -> Optional[str]:
    if age is None:
        return None
    return "baby" if age < BABY_AGE else "kid"


def find_layout(root: Path) -> dict:
    """The folders of the first 2022 layout found under ``root``."""
    for base, train_wav, train_json, test_wav, test_json in LAYOUTS:
        b = root / base if base else root
        if (b / train_json).is_dir() or (b / test_json).is_dir():
            folders = dict(train_wav=b / train_wav, train_json=b / train_json,
                           test_wav=b / test_wav, test_json=b / test_json)
            for name in ("train_json", "test_json"):
                if not folders[name].is_dir():
                    raise records.DataError(folders[name], "folder not found; expected the "
                                                           f"{name} folder of this layout")
            for sub in TEST_FOLDERS:
                if not (folders["test_json"] / sub).is_dir():
                    raise records.DataError(folders["test_json"] / sub, "folder not found; "
                                            f"expected {' and '.join(TEST_FOLDERS)} in "
                                            f"{folders['test_json']}")
            return folders
    names = ", ".join(f"{l[0] + '/' if l[0] else ''}{{{l[2]}, {l[4]}}}" for l in LAYOUTS)
    raise records.DataError(root, f"no SPRSound 2022 layout found; expected {names}")


def _json_files(folders: dict) -> list:
    """(split or None when misplaced, path) of every annotation JSON, in path order."""
    out = [("train", p) for p in sorted(folders["train_json"].rglob("*.json"))]
    test = folders["test_json"]
    for p in sorted(test.rglob("*.json")):
        top = p.relative_to(test).parts[0]
        out.append((TEST_FOLDERS.get(top), p))
    return out


def wav_index(folder: Path) -> dict:
    """stem -> path of every WAV under ``folder``."""
    if not folder.is_dir():
        raise records.DataError(folder, "folder not found; expected the recordings (.wav) "
                                        "beside the annotation folder")
    return {p.stem: p for p in sorted(folder.rglob("*.wav"))}


def _ms(value) -> float:
    """Milliseconds as written (a string such as "239", or a number) -> float."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a number of milliseconds")
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"{value!r} is not a number of milliseconds >= 0")
    return ms


def _load(path: Path, problems: Problems) -> Optional[dict]:
    """The JSON object of one annotation file; None (reported) when it is unusable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        problems.bad(path, f"not a UTF-8 text file ({e}); {_JSON_FORMAT}")
        return None
    except json.JSONDecodeError as e:
        problems.bad(path, f"invalid JSON ({e.msg} at column {e.colno}); {_JSON_FORMAT}",
                     e.lineno)
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event_annotation"), list):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        problems.bad(path, f"no 'event_annotation' list (found {found}); {_JSON_FORMAT}")
        return None
    return obj


def _events(obj: dict, path: Path, problems: Problems, dropped: list) -> list:
    """(event number, start s, end s, label) of a loaded file, sorted by start."""
    events = []
    for k, ev in enumerate(obj["event_annotation"]):
        missing = [key for key in ("start", "end", "type")
                   if not isinstance(ev, dict) or key not in ev]
        if missing:
            problems.bad(path, f"event {k} lacks {missing}; {_JSON_FORMAT}")
            continue
        try:
            start, end = _ms(ev["start"]), _ms(ev["end"])
        except ValueError as e:
            problems.bad(path, f"event {k}: {e}; {_JSON_FORMAT}")
            continue
        kind = ev["type"].strip() if isinstance(ev["type"], str) else ev["type"]
        if kind not in EVENT_CLASSES:
            problems.bad(path, f"event {k}: unknown event type {ev['type']!r}; expected one "
                               f"of {CLASSES}")
            continue
        if end <= start:
            dropped.append(records.Skipped(
                str(path), f"event {k} ({kind}, {ev['start']}-{ev['end']} ms) has end <= "
                           "start; docs/method.md §1.2 keeps only events with end > start"))
            continue
        events.append((k, start / 1000.0, end / 1000.0, EVENT_CLASSES[kind]))
    events.sort(key=lambda e: e[1])
    return events


def _read_events(path: Path, problems: Problems, dropped: list) -> Optional[list]:
    """(event number, start s, end s, label) sorted by start; None when the file is unusable."""
    obj = _load(path, problems)
    return None if obj is None else _events(obj, path, problems, dropped)


def _record_label(obj: dict, path: Path, problems: Problems, dropped: list) -> Optional[int]:
    """The index in `RECORD_CLASSES` of the file's record annotation; None (a file without
    one is listed in ``dropped``: no record-level unit) when there is none."""
    key = next((k for k in RECORD_KEYS if k in obj), None)
    if key is None:
        dropped.append(records.Skipped(str(path), "no record_annotation: the recording has no "
                                                  "record-level unit (docs/method.md §13.3)"))
        return None
    value = obj[key].strip() if isinstance(obj[key], str) else obj[key]
    if value not in RECORD_CLASSES:
        problems.bad(path, f"{key} {obj[key]!r} is not one of {RECORD_CLASSES}")
        return None
    return RECORD_CLASSES.index(value)


def read_event_file(path) -> tuple:
    """``([(start s, end s, label)] sorted by start, [dropped events])`` of one event JSON;
    `DataError` naming the file for anything malformed. Dropped events (end <= start, which
    docs/method.md §1.2 leaves out) are returned as `records.Skipped` for the caller to report."""
    dropped: list = []
    events = _read_events(Path(path), Problems(skip_bad=False), dropped)
    return [(start, end, label) for _, start, end, label in events], dropped


def recording_cycles(path: Path, split: str, info: dict, problems: Problems, dropped: list, *,
                     wavs: Optional[dict], wav_folder: Path, dataset: str = NAME,
                     whole: bool = False) -> list:
    """The `Cycle`s of one event JSON (``info``: its parsed stem): its events sorted by
    start, clamped to its recording ``wavs[stem]`` (in ``wav_folder``; ``wavs`` None:
    annotations only, no clamping, ``wav_path`` ''); ``whole``: and, in the split
    ``<split>_records``, one unit of the whole recording labelled with its record
    annotation (`RECORD_CLASSES`)."""
    obj = _load(path, problems)
    if obj is None:
        return []
    units = [(None, f"event {k}", start, end, (split, label))
             for k, start, end, label in _events(obj, path, problems, dropped)]
    record = _record_label(obj, path, problems, dropped) if whole else None
    what = "event"
    if record is not None:   # until the end of the audio (clamped below)
        units.append((None, "the recording", 0.0, math.inf, (split + RECORDS, record)))
        what = "unit"   # events and the recording's own
    wav_path = ""
    if wavs is not None and units:
        wav = wavs.get(path.stem)
        if wav is None:
            problems.error(records.DataError(
                wav_folder / f"{path.stem}.wav",
                f"file not found; expected the recording of {path.name}"),
                f"{len(units)} {what}(s) of {path.stem} skipped")
            return []
        fitted = fit_to_recording(wav, units, problems, path, what)
        if fitted is None:
            return []
        wav_path, units = fitted
    out, events = [], 0
    for _, _, start, end, (unit_split, label) in units:
        whole_recording = unit_split != split
        out.append(records.Cycle(
            dataset=dataset, split=unit_split, stem=path.stem, wav_path=wav_path,
            index=0 if whole_recording else events, patient=info["patient"], start=start,
            end=end, label=label,
            label_name=(RECORD_CLASSES if whole_recording else CLASSES)[label],
            sex=info["sex"], age=info["age"], age_group=age_group(info["age"]),
            location=info["location"]))
        events += not whole_recording
    return out


def warn_dropped(dropped: list) -> None:
    """Logs what the reader left out by rule: events with end <= start, recordings without
    a record annotation (no record-level unit)."""
    events = [d for d in dropped if d.reason.startswith("event ")]
    whole = [d for d in dropped if not d.reason.startswith("event ")]
    for found, what in ((events, "event(s) with end <= start left out (docs/method.md §1.2)"),
                        (whole, "recording(s) without a record annotation")):
        if found:
            logging.warning("SPRSound: %d %s, e.g. %s: %s", len(found), what, found[0].path,
                            found[0].reason)


def read(root, *, annotations_only: bool = False, skip_bad: bool = False,
         dropped: Optional[list] = None, whole: bool = False) -> records.ReadResult:
    """All events of an SPRSound 2022 root: train, then inter_test, then intra_test files;
    ``whole``: then one unit per recording in `RECORD_SPLITS` (`recording_cycles`).

    ``annotations_only`` leaves the WAV files alone (no clamping, ``wav_path`` ''). Bad input
    raises `DataError` naming the file; with ``skip_bad`` the bad event or file is left out and
    listed in ``ReadResult.skipped``. Events with end <= start are left out as docs/method.md
    §1.2 says: logged, and appended to ``dropped`` when given.
    """
    root = Path(root)
    if not root.is_dir():
        raise records.DataError(root, "dataset root not found; expected a directory with the "
                                      "SPRSound 2022 folders")
    folders = find_layout(root)
    problems = Problems(skip_bad)
    dropped_here: list = []
    wavs: dict = {}
    if not annotations_only:
        wavs = {"train": wav_index(folders["train_wav"])}
        wavs["test"] = wav_index(folders["test_wav"])

    by_split = {s: [] for s in SPLITS}
    for split, path in _json_files(folders):
        if split is None:
            problems.bad(path, f"JSON not under {' or '.join(TEST_FOLDERS)}; expected test "
                               "annotations in one of those folders")
            continue
        try:
            info = parse_stem(path.stem)
        except ValueError as e:
            problems.bad(path, str(e))
            continue
        group = "train" if split == "train" else "test"
        by_split[split] += recording_cycles(
            path, split, info, problems, dropped_here, wavs=wavs.get(group),
            wav_folder=folders[f"{group}_wav"], whole=whole)

    warn_dropped(dropped_here)
    if dropped is not None:
        dropped.extend(dropped_here)
    splits = SPLITS + (RECORD_SPLITS if whole else ())
    cycles = [c for s in splits for c in by_split[s.removesuffix(RECORDS)] if c.split == s]
    return records.ReadResult(cycles=cycles, skipped=problems.skipped, splits=splits,
                              classes=CLASSES)


class SprsoundSource(sources.Source):
    """SPRSound's 2022 release (BioCAS 2022): its train split and the inter- and
    intra-patient test splits, one cycle per annotated event."""
    name, title = NAME, "SPRSound 2022"
    classes, vocabs, splits, test_split = CLASSES, VOCABS, SPLITS, "inter_test"
    epochs, class_weighted = 200, False    # docs/method.md §4, §5
    annotation_suffix = ".json"
    inspect_fields = ("sex", "age_group", "location")
    dropped_note = "event(s) with end <= start left out as docs/method.md §1.2 says"
    sprsound_score = True
    prompt_words = (("sex", (("M", "male"), ("F", "female"))),)  # BTS's sentences
    synthetic, synthetic_default = "resp_jax.data.synthetic.sprsound:write_sprsound", 60

    protocols = (OFFICIAL,) + tuple(TASKS)
    class_maps = CLASS_MAPS

    def read(self, root, *, annotations_only=False, skip_bad=False, schema=None, dropped=None):
        return read(root, annotations_only=annotations_only, skip_bad=skip_bad,
                    dropped=dropped)

    def read_prepared(self, root, *, skip_bad=False, schema=None):
        """The events and, for the record-level tasks, every whole recording."""
        return read(root, skip_bad=skip_bad, whole=True)

    def fingerprint(self, h, root, exclude=None, schema=None) -> None:
        h.update(b"events and whole recordings\n")  # copies before record units lack them
        super().fingerprint(h, root, exclude=exclude, schema=schema)

    def read_annotation(self, path) -> tuple:
        return read_event_file(path)

    def protocol(self, name: str = OFFICIAL) -> Protocol:
        if name in TASKS:
            classes, reads, _ = TASKS[name]
            return Protocol(name, classes=classes, reads=reads)
        return super().protocol(name)

    def protocol_splits(self, splits: dict, protocol: str = OFFICIAL,
                        test_split: Optional[str] = None, held_out: str = "") -> dict:
        """A task's splits under the dataset's split names: the events (tasks 1-x) or the
        whole recordings (2-x) of each split, relabelled to the task's classes."""
        if protocol not in TASKS:
            return super().protocol_splits(splits, protocol, test_split, held_out)
        _, reads, table = TASKS[protocol]
        chosen = {name.removesuffix(RECORDS): relabel(splits[name], table)
                  for name in reads if name in splits}
        return super().protocol_splits(chosen, OFFICIAL, test_split)


SOURCE = SprsoundSource()
