"""ICBHI 2017 reader: the distributed files (docs/method.md §1.1) to one `Cycle` per annotated cycle.

Layout: ``ROOT/ICBHI_final_database/<stem>.wav|.txt`` (or the same files directly in ROOT),
beside the official split, the demographics and the diagnosis files (looked up in ROOT, then
in the annotation folder). Quirks handled here so no later stage needs to know them:
- the split file is CRLF and is matched on the stem without its device suffix, because one
  entry names a recording under the wrong device (226_1b1_Pl_sc_Meditron / _LittC2SE);
- demographics come tab separated (CRLF, ``NA`` = missing) or as the space-separated
  ``demographic_info.txt``; a patient with ``NA`` sex or age has unknown sex / age group;
- a cycle that ends past the end of its recording is clamped to the audio's duration (the
  duration is read from the WAV header, so only when the audio is read);
- recordings come in the reference code's order (`REFERENCE_ORDER`, the M-SCL code's metadata
  table), cycles in annotation order: the batch min-max makes evaluation scores depend on
  which cycles share a batch, so every later stage (evaluation batches, a manifest written
  from this reader) keeps this order.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Optional

from resp_jax.data import records, sources
from resp_jax.data.wav_checks import Problems, fit_to_recording

NAME = "icbhi"
# Class names in label order (docs/method.md §1.1): crackles + 2 x wheezes.
CLASSES = ("normal", "crackle", "wheeze", "both")
SPLITS = ("train", "test")
VOCABS = (
    ("sex", ("M", "F")),
    ("age_group", ("adult", "child")),
    ("device", ("AKGC417L", "LittC2SE", "Litt3200", "Meditron")),
    ("location", ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")),
    ("mode", ("sc", "mc")),
    ("diagnosis", ("Healthy", "URTI", "COPD", "Asthma", "LRTI", "Bronchiectasis", "Pneumonia",
                   "Bronchiolitis")),
)
_VOCAB = dict(VOCABS)
# How BTS writes these values in its sentences ([bts] util/icbhi_util.py:136-171,
# meta_description.py:40-46; docs/method.md §14): the AKG C417L is a microphone, the others
# stethoscopes; locations in words.
PROMPT_WORDS = (
    ("sex", (("M", "male"), ("F", "female"))),
    ("age_group", (("adult", "adult"), ("child", "pediatric"))),
    ("device", tuple((d, f"{d} {'microphone' if d == 'AKGC417L' else 'stethoscope'}")
                     for d in _VOCAB["device"])),
    ("location", (("Tc", "trachea"), ("Al", "left anterior chest"),
                  ("Ar", "right anterior chest"), ("Pl", "left posterior chest"),
                  ("Pr", "right posterior chest"), ("Ll", "left lateral chest"),
                  ("Lr", "right lateral chest"))),
)

AUDIO_DIR = "ICBHI_final_database"
SPLIT_FILE = "ICBHI_challenge_train_test.txt"
DEMOGRAPHICS_FILES = ("ICBHI_Challenge_demographic_information.txt", "demographic_info.txt")
DIAGNOSIS_FILE = "ICBHI_Challenge_diagnosis.txt"
ADULT_AGE = 18.0   # adult if age > 18, child otherwise (docs/method.md §1.1)
MISSING = ("NA", "")
REFERENCE_ORDER = "icbhi_reference_order.txt"  # beside this module (package data)

# Annotation files start with the numeric patient id; other .txt files (README, file lists,
# the metadata files when everything lies in ROOT) do not and are not annotations.
_ANNOTATION_NAME = re.compile(r"^\d+_.*\.txt$")
_STEM_FORMAT = "PID_REC_LOC_MODE_DEVICE (e.g. 101_1b1_Al_sc_Meditron)"


def parse_stem(stem: str) -> dict:
    """Patient, recording, location, mode and device of a stem; ValueError saying what is wrong."""
    parts = stem.split("_")
    if len(parts) != 5 or not parts[0].isdigit():
        raise ValueError(f"file name {stem!r} is not {_STEM_FORMAT}")
    patient, rec, location, mode, device = parts
    for field, value in (("location", location), ("mode", mode), ("device", device)):
        allowed = _VOCAB[field]
        if value not in allowed:
            raise ValueError(f"file name {stem!r}: {field} {value!r} is not one of {allowed} "
                             f"(expected {_STEM_FORMAT})")
    return dict(patient=patient, recording=rec, location=location, mode=mode, device=device)


def split_key(stem: str) -> str:
    """The stem without its device suffix: what the split file is matched on."""
    return stem.rsplit("_", 1)[0]


def age_group(age: Optional[float]) -> Optional[str]:
    if age is None:
        return None
    return "adult" if age > ADULT_AGE else "child"


def _lines(path: Path):
    """(line number, text) of the non-blank lines; CRLF, LF and a UTF-8 BOM all accepted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise records.DataError(path, f"not a UTF-8 text file ({e})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _fields(line: str) -> list:
    """Tab-separated fields when there are tabs (empty fields kept), else whitespace-separated."""
    if "\t" in line:
        return [f.strip() for f in line.split("\t")]
    return line.split()


def _find(root: Path, audio_dir: Path, names) -> Optional[Path]:
    for name in names:
        for folder in (root, audio_dir):
            p = folder / name
            if p.is_file():
                return p
    return None


def _require(root: Path, audio_dir: Path, names, what: str) -> Path:
    p = _find(root, audio_dir, names)
    if p is None:
        raise records.DataError(
            root, f"no {what} file; expected {' or '.join(names)} in {root} or {audio_dir}")
    return p


def _read_split(path: Path, problems: Problems) -> dict:
    """split key -> (split, line number, stem as written)."""
    out = {}
    for number, line in _lines(path):
        f = _fields(line)
        if len(f) != 2 or f[1].lower() not in ("train", "test"):
            problems.bad(path, f"malformed split line {line!r}; expected '<stem><TAB>train|test'",
                         number)
            continue
        stem, split = f[0], f[1].lower()
        key = split_key(stem)
        if key in out and out[key][0] != split:
            problems.bad(path, f"{stem} is listed as {split} here but as {out[key][0]} on line "
                               f"{out[key][1]}; expected one split per recording", number)
            continue
        out.setdefault(key, (split, number, stem))
    return out


def _read_demographics(path: Path, problems: Problems) -> dict:
    """patient -> (sex or None, age or None)."""
    out = {}
    expected = ("expected 'ID age sex [adult BMI] [child weight] [child height]' with "
                "sex M/F and 'NA' for missing values")
    for number, line in _lines(path):
        f = _fields(line)
        if not 3 <= len(f) <= 6 or not f[0].isdigit():
            problems.bad(path, f"malformed demographics line {line!r}; {expected}", number)
            continue
        pid, age_s, sex_s = f[0], f[1], f[2].upper()
        try:
            age = None if age_s in MISSING else float(age_s)
            if age is not None and not (math.isfinite(age) and age >= 0):
                raise ValueError
        except ValueError:
            problems.bad(path, f"age {age_s!r} of patient {pid} is not a number >= 0 or NA; "
                               f"{expected}", number)
            continue
        if sex_s not in ("M", "F") + MISSING:
            problems.bad(path, f"sex {f[2]!r} of patient {pid} is not M, F or NA; {expected}",
                         number)
            continue
        if pid in out:
            problems.bad(path, f"second row for patient {pid}; expected one line per patient",
                         number)
            continue
        out[pid] = (None if sex_s in MISSING else sex_s, age)
    return out


def _read_diagnosis(path: Path, problems: Problems) -> dict:
    """patient -> diagnosis (or None when NA)."""
    allowed = _VOCAB["diagnosis"]
    out = {}
    for number, line in _lines(path):
        f = _fields(line)
        if len(f) != 2 or not f[0].isdigit():
            problems.bad(path, f"malformed diagnosis line {line!r}; expected 'ID<TAB>diagnosis'",
                         number)
            continue
        pid, diagnosis = f
        if pid in out:
            problems.bad(path, f"second row for patient {pid}; expected one line per patient",
                         number)
        elif diagnosis in MISSING:
            out[pid] = None
        elif diagnosis in allowed:
            out[pid] = diagnosis
        else:
            problems.bad(path, f"diagnosis {diagnosis!r} of patient {pid} is not one of "
                               f"{allowed}", number)
    return out


def _read_annotation(path: Path, problems: Problems) -> Optional[list]:
    """(line number, position, start, end, label) per cycle line; None when unreadable."""
    expected = "expected 'start<TAB>end<TAB>crackles<TAB>wheezes' (seconds, then 0/1 flags)"
    try:
        numbered = list(_lines(path))
    except records.DataError as e:
        problems.error(e, "recording skipped")
        return None
    cycles = []
    for position, (number, line) in enumerate(numbered):
        f = line.split()
        try:
            if len(f) != 4:
                raise ValueError(f"{len(f)} fields")
            start, end = float(f[0]), float(f[1])
            crackles, wheezes = int(f[2]), int(f[3])
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError("times must be finite")
            if crackles not in (0, 1) or wheezes not in (0, 1):
                raise ValueError("flags must be 0 or 1")
            if not 0 <= start < end:
                raise ValueError("expected 0 <= start < end")
        except ValueError as e:
            problems.bad(path, f"malformed cycle line {line!r} ({e}); {expected}", number)
            continue
        cycles.append((number, position, start, end, crackles + 2 * wheezes))
    return cycles


def read_annotation_file(path) -> list:
    """(start s, end s, label) of every cycle line of one ``<stem>.txt``, in file order;
    `DataError` naming the file and line for anything malformed."""
    return [(start, end, label) for _, _, start, end, label in
            _read_annotation(Path(path), Problems(skip_bad=False))]


@functools.lru_cache(maxsize=1)
def reference_ranks() -> dict:
    """{stem: rank} of the 920 recordings in the reference code's order (`REFERENCE_ORDER`)."""
    path = Path(__file__).with_name(REFERENCE_ORDER)
    stems = [line.strip() for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {stem: rank for rank, stem in enumerate(stems)}


def in_reference_order(stems) -> list:
    """``stems`` sorted as the reference code lists them; stems it does not list (other
    recordings, synthetic ones) come after them, sorted."""
    ranks = reference_ranks()
    return sorted(stems, key=lambda stem: (ranks.get(stem, len(ranks)), stem))


def _annotation_dir(root: Path) -> tuple:
    """(folder, sorted annotation files) from ROOT/ICBHI_final_database, else ROOT itself."""
    for folder in (root / AUDIO_DIR, root):
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir()
                           if p.is_file() and _ANNOTATION_NAME.match(p.name))
            if files:
                return folder, files
    raise records.DataError(
        root, f"no annotation files; expected {root}/{AUDIO_DIR}/<stem>.txt or "
              f"{root}/<stem>.txt named {_STEM_FORMAT}")


def locate(root) -> dict:
    """The files of an ICBHI root: ``audio_dir``, ``annotations`` (sorted), ``split``,
    ``demographics`` and ``diagnosis``; `DataError` naming what is missing."""
    root = Path(root)
    audio_dir, files = _annotation_dir(root)
    return dict(audio_dir=audio_dir, annotations=files,
                split=_require(root, audio_dir, (SPLIT_FILE,), "split"),
                demographics=_require(root, audio_dir, DEMOGRAPHICS_FILES, "demographics"),
                diagnosis=_require(root, audio_dir, (DIAGNOSIS_FILE,), "diagnosis"))


def read(root, *, annotations_only: bool = False, skip_bad: bool = False) -> records.ReadResult:
    """All cycles of an ICBHI 2017 root: recordings `in_reference_order`, cycles in file
    order.

    ``annotations_only`` leaves the WAV files alone (no clamping, ``wav_path`` ''). Bad input
    raises `DataError` naming the file and line; with ``skip_bad`` the bad item (a line, a
    recording, a split entry) is left out and listed in ``ReadResult.skipped``.
    """
    root = Path(root)
    if not root.is_dir():
        raise records.DataError(root, "dataset root not found; expected a directory holding "
                                      f"{AUDIO_DIR}/ and {SPLIT_FILE}")
    problems = Problems(skip_bad)
    found = locate(root)
    audio_dir, files = found["audio_dir"], found["annotations"]
    split_path, demo_path, diag_path = found["split"], found["demographics"], found["diagnosis"]
    splits = _read_split(split_path, problems)
    demographics = _read_demographics(demo_path, problems)
    diagnoses = _read_diagnosis(diag_path, problems)

    cycles = []
    seen_keys = set()
    by_stem = {path.stem: path for path in files}
    for path in (by_stem[stem] for stem in in_reference_order(by_stem)):
        stem = path.stem
        try:
            info = parse_stem(stem)
        except ValueError as e:
            problems.bad(path, str(e))
            continue
        key = split_key(stem)
        seen_keys.add(key)
        if key not in splits:
            problems.bad(path, f"recording {stem} is not in the split file {split_path}; "
                               f"expected a line '{stem}<TAB>train|test'")
            continue
        split = splits[key][0]
        pid = info["patient"]
        if pid not in demographics:
            problems.bad(demo_path, f"no row for patient {pid} (needed by {path.name}); "
                                    "expected one line per patient")
            continue
        if pid not in diagnoses:
            problems.bad(diag_path, f"no row for patient {pid} (needed by {path.name}); "
                                    "expected one line per patient")
            continue
        lines = _read_annotation(path, problems)
        if lines is None:
            continue
        if not lines:
            problems.bad(path, "annotation file without cycles; expected one "
                               "'start<TAB>end<TAB>crackles<TAB>wheezes' line per cycle")
            continue
        units = [(number, "cycle", start, end, (position, label))
                 for number, position, start, end, label in lines]
        wav_path = ""
        if not annotations_only:
            fitted = fit_to_recording(audio_dir / f"{stem}.wav", units, problems, path, "cycle")
            if fitted is None:
                continue
            wav_path, units = fitted
        sex, age = demographics[pid]
        for _, _, start, end, (position, label) in units:
            cycles.append(records.Cycle(
                dataset=NAME, split=split, stem=stem, wav_path=wav_path,
                index=position, patient=pid, start=start, end=end, label=label,
                label_name=CLASSES[label], sex=sex, age=age,
                age_group=age_group(age), device=info["device"], location=info["location"],
                mode=info["mode"], diagnosis=diagnoses[pid]))

    for key, (_, number, stem) in sorted(splits.items(), key=lambda kv: kv[1][1]):
        if key not in seen_keys:
            problems.bad(split_path, f"names recording {stem}, but there is no annotation "
                                     f"file {key}_<device>.txt in {audio_dir}", number)
    return records.ReadResult(cycles=cycles, skipped=problems.skipped, splits=SPLITS,
                              classes=CLASSES)


class IcbhiSource(sources.Source):
    """ICBHI 2017: the official split, cycles from the ``<stem>.txt`` annotations; or one
    recording device held out (every recording of it tested, the other devices trained on)."""
    name, title = NAME, "ICBHI 2017"
    classes, vocabs, splits, test_split = CLASSES, VOCABS, SPLITS, "test"
    epochs, class_weighted = 400, True     # docs/method.md §4, §5
    annotation_suffix = ".txt"
    inspect_fields = ("sex", "age_group", "device")
    synthetic, synthetic_default = "resp_jax.data.synthetic.icbhi:write_icbhi", 160
    prompt_words = PROMPT_WORDS
    # leave-one-device-out (docs/method.md §13.1): data.held_out is one of the four devices
    protocols = (sources.OFFICIAL, sources.LEAVE_DEVICE_OUT)

    def read(self, root, *, annotations_only=False, skip_bad=False, schema=None, dropped=None):
        return read(root, annotations_only=annotations_only, skip_bad=skip_bad)

    def read_annotation(self, path) -> tuple:
        return read_annotation_file(path), []


SOURCE = IcbhiSource()
