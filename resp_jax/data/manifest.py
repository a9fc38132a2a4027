"""Manifest reader: your own recordings, listed in one CSV, to one `Cycle` per row.

The format (README, "Your own recordings"): a CSV with a header whose required columns are
``path`` (audio file, relative to the CSV's folder or absolute; any format and sample rate
soundfile reads), ``start`` and ``end`` (seconds; both empty = the whole file), ``label``
(class name), ``split`` (any name; 'train' is trained on, ``data.test_split`` is reported) and
``patient`` (id; the validation carve keeps patients whole). Every other column is a metadata
field, usable as a contrastive head like ICBHI's; an empty cell is unknown, and an ``age``
column (years) also yields ``age_group`` with ICBHI's rule (adult if age > 18, child
otherwise; docs/method.md §1.1).

Classes and vocabularies come from the CSV (`describe`): the classes are ``data.classes`` or
the labels found, ``data.normal_class`` first (Sp is its recall: class 0, docs/method.md §6);
a field's values are the ones found, sorted (numerically when all are numbers).
Every bad item names the CSV, its line and the column; ``skip_bad`` skips and lists bad rows.
A segment ending past its audio is clamped with a warning, as ICBHI's cycles are, and a
patient found in two splits is a warning (it breaks patient-disjoint evaluation).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Optional

from absl import logging

from resp_jax.data import icbhi, records, sources
from resp_jax.data.wav_checks import Problems, clamp_to_audio, sound_info

NAME = "manifest"
REQUIRED = ("path", "start", "end", "label", "split", "patient")
# Names a metadata column may not take: the prepared copy's own keys and the SimCLR head.
RESERVED = REQUIRED + ("audio", "stem", "index", "order", "instance")
DEFAULT_NORMAL = "normal"
DEFAULT_TEST_SPLIT = "test"
AGE, AGE_GROUP = "age", "age_group"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")   # a field name ('+' joins composites)
_SPLIT = re.compile(r"^[A-Za-z0-9_]+$")           # what TFDS accepts as a split name
_HEADER = ",".join(REQUIRED) + "[,metadata columns ...]"
WARNED = 5   # clamped segments named in the warning; the rest are counted


@dataclasses.dataclass
class Table:
    """A manifest CSV parsed, not yet checked row by row."""
    path: Path
    columns: tuple   # the header
    fields: tuple    # metadata fields: the other columns, plus 'age_group' derived from 'age'
    rows: list       # (line number, [cell, ...] stripped)

    def cells(self, row: list) -> dict:
        return dict(zip(self.columns, row))


def table(path) -> Table:
    """The header and rows of a manifest; `DataError` naming the CSV when the file or its
    header is unusable (bad rows are the reader's to report, line by line)."""
    path = Path(path)
    if not path.is_file():
        raise records.DataError(path, "manifest not found; expected a CSV file with the "
                                      f"header {_HEADER}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, [c.strip() for c in row]) for row in reader]
    except UnicodeDecodeError as e:
        raise records.DataError(path, f"not a UTF-8 text file ({e})") from None
    except csv.Error as e:
        raise records.DataError(path, f"not a readable CSV ({e})") from None
    lines = [(n, row) for n, row in lines if any(row)]
    if not lines:
        raise records.DataError(path, f"empty manifest; expected the header {_HEADER}", 1)
    number, header = lines[0]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise records.DataError(path, f"missing required column(s) {', '.join(missing)}; "
                                      f"expected the header {_HEADER}", number)
    for k, name in enumerate(header):
        if name in header[:k]:
            raise records.DataError(path, f"column {name!r} appears twice in the header",
                                    number)
        if name not in REQUIRED and (not _NAME.match(name) or name in RESERVED):
            raise records.DataError(
                path, f"column {name!r}: a metadata column needs a name of letters, digits "
                      f"and '_' (not starting with a digit) other than {', '.join(RESERVED)}",
                number)
    fields = tuple(c for c in header if c not in REQUIRED)
    if AGE in fields and AGE_GROUP not in fields:
        fields += (AGE_GROUP,)
    return Table(path, tuple(header), fields, lines[1:])


def _age(text: str) -> Optional[float]:
    """Years from an ``age`` cell; None when empty; ValueError when not a number >= 0."""
    if not text:
        return None
    age = float(text)
    if not (math.isfinite(age) and age >= 0):
        raise ValueError
    return age


def _sorted(values) -> tuple:
    """Numerically when every value is a number, else as text."""
    values = sorted(set(values))
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(values)


def describe(path, classes=None, normal_class: Optional[str] = None, t: Table = None) -> tuple:
    """``(metadata.Schema, splits)`` of a manifest from its CSV alone (no audio is opened):
    the classes (``classes`` or the labels found, ``normal_class`` first), every field's
    values in code order, and the split names ('train' first)."""
    t = t or table(path)
    normal = normal_class or DEFAULT_NORMAL
    found = [t.cells(r) for _, r in t.rows if len(r) == len(t.columns)]
    labels = _sorted(c["label"] for c in found if c["label"])
    where = f"{t.path}: column label"
    if classes:
        classes = tuple(str(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"config.data.classes names a class twice: {classes}")
        if normal not in classes:
            raise ValueError(f"config.data.normal_class={normal!r} is not one of "
                             f"config.data.classes {classes}")
    else:
        if normal not in labels:
            raise records.DataError(t.path, f"column label: no {normal!r} row (labels found: "
                                            f"{', '.join(labels) or 'none'}); Sp is the recall "
                                            "of the normal class: set data.normal_class")
        classes = labels
    classes = (normal,) + tuple(c for c in classes if c != normal)
    if len(classes) < 2:
        raise ValueError(f"{where}: only the class {normal!r}; expected a normal class and at "
                         "least one abnormal class")
    vocabs = []
    for field in t.fields:
        if field == AGE_GROUP and AGE_GROUP not in t.columns:
            ages = []
            for c in found:
                try:
                    ages.append(_age(c[AGE]))
                except ValueError:
                    pass
            values = [icbhi.age_group(a) for a in ages if a is not None]
        else:
            values = [c[field] for c in found if c[field]]
        vocabs.append((field, _sorted(values)))
    names = {c["split"] for c in found if c["split"]}
    splits = tuple(sorted(names, key=lambda s: (s != "train", s)))
    return sources.Schema(NAME, classes, tuple(vocabs)), splits


def audio_paths(path) -> list:
    """Every audio file a manifest names (resolved, first appearance first): with the CSV's
    content, what its prepared copy is keyed on (`prepared_copies.fingerprint`)."""
    t = table(path)
    k = t.columns.index("path")
    seen = {}
    for _, row in t.rows:
        if len(row) > k and row[k]:
            seen.setdefault(str(_resolve(t.path, row[k])), None)
    return list(seen)


def _resolve(csv_path: Path, cell: str) -> Path:
    p = Path(os.path.expanduser(cell))
    return p if p.is_absolute() else csv_path.parent / p


def _seconds(cells: dict) -> tuple:
    """(start, end) in seconds, None for a whole file; ValueError '<column>: <reason>'."""
    a, b = cells["start"], cells["end"]
    if not a and not b:
        return None
    if not a or not b:
        column = "start" if not a else "end"
        raise ValueError(f"{column}: empty while the other is set; give both (seconds) or "
                         "leave both empty for the whole file")
    out = []
    for column, text in (("start", a), ("end", b)):
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{column}: {text!r} is not a number of seconds") from None
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{column}: {text!r} is not a finite number of seconds >= 0")
        out.append(v)
    if out[1] <= out[0]:
        raise ValueError(f"end: {b} s is not after start {a} s; expected start < end")
    return out[0], out[1]


def read(path, *, schema: Optional[sources.Schema] = None, classes=None,
         normal_class: Optional[str] = None, annotations_only: bool = False,
         skip_bad: bool = False) -> records.ReadResult:
    """Every row of a manifest as a `Cycle`, in CSV order.

    ``schema`` (from the run's config) fixes the classes and field values; without it they
    are the CSV's (`describe` with ``classes`` and ``normal_class``). ``annotations_only``
    leaves the audio alone (no checks or clamping; a whole-file row ends at infinity).
    """
    path = Path(path)
    t = table(path)
    if schema is not None:   # its normal class need not be 'normal' (data.normal_class)
        classes, normal_class = schema.classes, schema.classes[0]
    own, splits = describe(path, classes, normal_class, t)
    schema = schema or own
    problems = Problems(skip_bad)
    index = {c: i for i, c in enumerate(schema.classes)}
    durations, counts, patients, clamped = {}, {}, {}, []
    cycles = []
    for number, row in t.rows:
        def bad(column, reason):
            problems.bad(path, f"column {column}: {reason}" if column else reason, number)

        if len(row) != len(t.columns):
            bad(None, f"{len(row)} cells, the header has {len(t.columns)}; expected one cell "
                      "per column (quote cells holding commas)")
            continue
        cells = t.cells(row)
        try:
            span = _seconds(cells)
        except ValueError as e:
            column, reason = str(e).split(": ", 1)
            bad(column, reason)
            continue
        problem = None
        for column in ("path", "label", "split", "patient"):
            if not cells[column]:
                problem = (column, "empty; expected a value")
                break
        else:
            if cells["label"] not in index:
                problem = ("label", f"{cells['label']!r} is not one of data.classes "
                                    f"{schema.classes}")
            elif not _SPLIT.match(cells["split"]):
                problem = ("split", f"{cells['split']!r}: expected a name of letters, digits "
                                    "and '_'")
        if problem:
            bad(*problem)
            continue
        extra, ok = [], True
        for field in t.fields:
            text = cells.get(field, "")
            if field == AGE_GROUP and AGE_GROUP not in t.columns:
                continue
            if field == AGE:
                try:
                    age = _age(text)
                except ValueError:
                    bad(AGE, f"{text!r} is not an age in years (a number >= 0, or empty)")
                    ok = False
                    break
                if AGE_GROUP not in t.columns:
                    extra.append((AGE_GROUP, icbhi.age_group(age)))
            if text and text not in schema.vocab(field):
                bad(field, f"{text!r} is not among the values recorded in the run's config "
                           f"(data.fields: {schema.vocab(field)}); the CSV changed since")
                ok = False
                break
            extra.append((field, text or None))
        if not ok:
            continue
        wav = _resolve(path, cells["path"])
        if annotations_only:
            start, end = span or (0.0, math.inf)
            wav_path = ""
        else:
            key = str(wav)
            if key not in durations:
                try:
                    durations[key] = sound_info(wav).duration
                except records.DataError as e:
                    durations[key] = e
            duration = durations[key]
            if isinstance(duration, records.DataError):
                bad("path", f"{duration.reason} ({wav})")
                continue
            start, end = span or (0.0, duration)
            fitted = clamp_to_audio(start, end, duration)
            if fitted is None:
                bad("start", f"segment {start}-{end} s starts at or past the end of the audio "
                             f"({duration:.3f} s in {wav}); expected a segment inside it")
                continue
            if fitted[1] < end:
                clamped.append(f"{path.name}:{number} (end {end} > {duration:.3f} s)")
            start, end = fitted
            wav_path = key
        patient, split = cells["patient"], cells["split"]
        first = patients.setdefault(patient, (split, number))
        if first[0] != split and first[0] is not None:
            logging.warning("%s:%d: column patient: patient %r is in split %r here and in "
                            "split %r on line %d; patient-disjoint evaluation needs each "
                            "patient in one split", path, number, patient, split, first[0],
                            first[1])
            patients[patient] = (None, first[1])   # warned once per patient
        position = counts.get(str(wav), 0)
        counts[str(wav)] = position + 1
        extra.sort(key=lambda kv: t.fields.index(kv[0]))
        cycles.append(records.Cycle(
            dataset=NAME, split=split, stem=os.path.splitext(cells["path"])[0],
            wav_path=wav_path, index=position, patient=patient, start=start, end=end,
            label=index[cells["label"]], label_name=cells["label"], extra=tuple(extra)))
    if clamped:
        logging.warning("%s: %d segment(s) end past the end of their audio and were clamped to "
                        "it (column end): %s%s", path, len(clamped), ", ".join(clamped[:WARNED]),
                        f", ... ({len(clamped) - WARNED} more)" if len(clamped) > WARNED else "")
    return records.ReadResult(cycles=cycles, skipped=problems.skipped, splits=splits,
                              classes=schema.classes)


def write(path, rows, fields=()) -> Path:
    """A manifest CSV of ``rows`` (dicts with the required columns and ``fields``; None or a
    missing key is an empty cell): what the tests and the synthetic example write through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(REQUIRED) + [f for f in fields if f not in REQUIRED]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return path


class ManifestSource(sources.Source):
    """Your own recordings, listed in one CSV (README, "Your own recordings"): classes,
    fields and splits come from the CSV; ICBHI's recipe values."""
    name, title = NAME, "a manifest"
    root_is_file = True
    any_audio_format = True
    synthetic = "resp_jax.data.synthetic.manifest:write_manifest"

    def read(self, root, *, annotations_only=False, skip_bad=False, schema=None, dropped=None,
             classes=None, normal_class=None):
        return read(root, schema=schema, classes=classes, normal_class=normal_class,
                    annotations_only=annotations_only, skip_bad=skip_bad)

    def describe(self, root, classes=None, normal_class=None,
                 protocol=sources.OFFICIAL) -> tuple:
        self.protocol(protocol)   # the official one only
        if not root:
            raise ValueError("config.data.root: data.name='manifest' needs the CSV, e.g. "
                             "--config.data.root=PATH/manifest.csv (README, \"Your own "
                             "recordings\")")
        schema, splits = describe(root, classes, normal_class)
        return schema, splits, schema.classes[0]

    def check_root(self, root) -> Path:
        root = Path(root).expanduser().resolve()
        if not root.is_file():
            raise records.DataError(root, "manifest not found; expected a CSV file (README, "
                                          "\"Your own recordings\")")
        return root

    def fingerprint(self, h, root, exclude=None, schema=None) -> None:
        """The CSV's content, the size and mtime of every audio file it names, and the
        ``schema`` (classes and field values) its codes follow."""
        h.update(Path(root).read_bytes())
        for path in audio_paths(root):
            try:
                st = os.stat(path)
                h.update(f"\n{path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"\n{path}\tmissing".encode())
        h.update(("\n" + (schema.to_json() if schema else "")).encode())

    def inspect_view(self, result) -> tuple:
        """Every metadata column."""
        return tuple(f for f, _ in result.cycles[0].extra) if result.cycles else ()


SOURCE = ManifestSource()
