"""Evaluation from prediction files (docs/method.md §11): the per-cycle test predictions a run
writes beside results.json, the scores they give, and how sure those scores are.

A run, a sweep, `resp_jax.report` and `report --compare` compute through this module, so a
figure means the same wherever it is printed:
  `Predictions`, `write`, `read`   predictions.csv: one row per test cycle;
  `Predictions.scores`             Sp, Se, Score, HS (SPRSound score) exactly as results.json;
  `bootstrap`                      percentile intervals from resampling test patients;
  `paired`                         the difference of two runs on the same cycles, its paired
                                   patient-bootstrap interval and two-sided p-value;
  `subgroups`                      the scores per value of each metadata field;
  `across_seeds`, `welch`          a sweep's mean over seeds, its t interval, Welch's test.

The bootstrap resamples patients, not cycles: the cycles of one patient share a chest, a
stethoscope and a disease, so their errors are correlated and a cycle-level bootstrap would
pretend the test set holds far more independent evidence than its patients do.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from resp_jax import metrics
from resp_jax.data import sources

PREDICTIONS_FILE = "predictions.csv"
RESAMPLES = 2000   # bootstrap resamples by default (config eval.bootstrap_resamples)
SEED = 0           # every bootstrap draws from this seed: rerunning gives the same interval
LEVEL = 95.0       # percent coverage of every interval
FIXED = ("stem", "index", "start", "end", "patient")  # then the metadata fields
TRUE, PREDICTED, PROB = "annotated", "predicted", "p_"  # then one p_<class> per class


@dataclasses.dataclass
class Predictions:
    """The test predictions of one run at its selected epoch, one entry per cycle."""
    dataset: str
    classes: tuple
    stem: np.ndarray           # str [n]: recording
    index: np.ndarray          # int [n]: the cycle's position in its recording
    start: np.ndarray          # float [n]: start and end (s) as cut (the end clamped to the
    end: np.ndarray            # audio); NaN unknown
    patient: np.ndarray        # str [n]
    fields: dict               # metadata field -> str [n] value names ('' unknown)
    label: np.ndarray          # int [n]: annotated class
    predicted: np.ndarray      # int [n]: predicted class (the argmax the run scored)
    probabilities: np.ndarray  # float32 [n, C]

    def __len__(self) -> int:
        return len(self.label)

    def keys(self) -> list:
        return list(zip(self.stem.tolist(), self.index.tolist()))

    def scores(self) -> dict:
        """`metrics.summarize` of the file: the figures results.json reports."""
        return metrics.summarize(self.label, self.predicted, dataset=self.dataset,
                                 num_classes=len(self.classes))

    def take(self, rows) -> "Predictions":
        rows = np.asarray(rows, np.int64)
        return dataclasses.replace(
            self, stem=self.stem[rows], index=self.index[rows], start=self.start[rows],
            end=self.end[rows], patient=self.patient[rows],
            fields={k: v[rows] for k, v in self.fields.items()}, label=self.label[rows],
            predicted=self.predicted[rows], probabilities=self.probabilities[rows])


def from_outputs(split, outputs: dict, schema) -> Predictions:
    """The predictions of an evaluated split: ``split`` (`feature_store.SplitFeatures`: stem,
    index, start, end, patient, codes) and the eval step's per-cycle ``outputs`` (``label``,
    ``pred``, ``prob``, padding removed) in the same, prepared order."""
    n = len(split)
    if len(outputs["label"]) != n or not np.array_equal(outputs["label"], split.label):
        raise ValueError(f"{len(outputs['label'])} evaluated cycles do not line up with the "
                         f"{n} cycles of the split (labels differ)")
    names = {}
    for field, values in schema.vocabs:
        table = np.asarray(list(values) + [""], dtype=object)  # code -1 -> ''
        names[field] = table[np.asarray(split.codes[field])].astype(str)
    return Predictions(
        dataset=schema.dataset, classes=tuple(schema.classes),
        stem=np.asarray(split.stem, str), index=np.asarray(split.index, np.int64),
        start=np.asarray(split.start, np.float64), end=np.asarray(split.end, np.float64),
        patient=np.asarray(split.patient, str), fields=names,
        label=np.asarray(outputs["label"], np.int64),
        predicted=np.asarray(outputs["pred"], np.int64),
        probabilities=np.asarray(outputs["prob"], np.float32))


def _header(fields, classes) -> list:
    return list(FIXED) + list(fields) + [TRUE, PREDICTED] + [PROB + c for c in classes]


def columns(schema) -> list:
    """The header of a predictions file; ValueError when a metadata field's name is taken by
    a fixed column (a manifest column named like a class's probability column)."""
    header = _header([f for f, _ in schema.vocabs], schema.classes)
    taken = sorted({c for c in header if header.count(c) > 1})
    if taken:
        raise ValueError(f"metadata field(s) {taken} of {schema.dataset} would share a column "
                         f"name of {PREDICTIONS_FILE} (fixed columns {list(FIXED)}, "
                         f"{TRUE!r}, {PREDICTED!r}, {PROB}<class>): rename the column")
    return header


def _number(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


def write(path, p: Predictions) -> None:
    """Writes ``p`` as CSV atomically (temporary file + rename). Probabilities carry 9
    significant digits: the float32 values read back exactly."""
    path = Path(path)
    fields = list(p.fields)
    header = _header(fields, p.classes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(header)
            for i in range(len(p)):
                out.writerow([p.stem[i], int(p.index[i]), _number(p.start[i]),
                              _number(p.end[i]), p.patient[i]]
                             + [p.fields[k][i] for k in fields]
                             + [p.classes[p.label[i]], p.classes[p.predicted[i]]]
                             + [f"{v:.9g}" for v in p.probabilities[i].tolist()])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path, dataset: str) -> Predictions:
    """A predictions file written by `write`; ``dataset`` (the run's ``data.name``) decides
    whether the SPRSound score is computed. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run wrote no predictions file (runs "
                                "before per-cycle predictions existed); train it again")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty; expected the header of a predictions file")
    header = rows[0]
    missing = [c for c in FIXED + (TRUE, PREDICTED) if c not in header]
    col = {c: k for k, c in enumerate(header)}
    last = header[col[PREDICTED] + 1:] if PREDICTED in col else []
    classes = tuple(c[len(PROB):] for c in last if c.startswith(PROB))
    if missing or len(classes) < 2 or len(classes) != len(last):
        raise ValueError(f"{path}:1: not a predictions file (expected the columns "
                         f"{list(FIXED)}, metadata, {TRUE!r}, {PREDICTED!r}, then one "
                         f"{PROB}<class> per class)")
    fields = header[len(FIXED):col[TRUE]]
    code = {c: k for k, c in enumerate(classes)}
    table = {c: [] for c in header}
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: {len(row)} cells; expected {len(header)}")
        for c, v in zip(header, row):
            table[c].append(v)
        for c in (TRUE, PREDICTED):
            if row[col[c]] not in code:
                raise ValueError(f"{path}:{line}: {c} class {row[col[c]]!r} is not one of "
                                 f"{classes}")

    def floats(c):
        return np.array([float(v) if v else np.nan for v in table[c]], np.float64)

    try:
        probabilities = np.array([[float(table[PROB + c][i]) for c in classes]
                                  for i in range(len(rows) - 1)], np.float32)
        index = np.array([int(v) for v in table["index"]], np.int64)
        start, end = floats("start"), floats("end")
    except ValueError as e:
        raise ValueError(f"{path}: a number column holds a non-number ({e})") from None
    return Predictions(
        dataset=dataset, classes=classes, stem=np.array(table["stem"], str), index=index,
        start=start, end=end, patient=np.array(table["patient"], str),
        fields={c: np.array(table[c], str) for c in fields},
        label=np.array([code[v] for v in table[TRUE]], np.int64),
        predicted=np.array([code[v] for v in table[PREDICTED]], np.int64),
        probabilities=probabilities.reshape(len(rows) - 1, len(classes)))


# ------------------------------------------------------------------------------------------
# The patient bootstrap


def patient_confusions(p: Predictions) -> tuple:
    """(patient ids, sorted; [P, C, C] int64 confusion matrix of each patient's cycles)."""
    ids, which = np.unique(p.patient, return_inverse=True)
    c = len(p.classes)
    flat = np.bincount(which * c * c + p.label * c + p.predicted, minlength=len(ids) * c * c)
    return ids, flat.reshape(len(ids), c, c)


def resample_counts(patients: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """[R, P] int64: how often each patient is drawn in each resample of ``patients``
    patients drawn with replacement (``rng.integers(0, P, (R, P))`` of `default_rng(seed)`)."""
    if patients < 1 or resamples < 1:
        raise ValueError(f"a bootstrap needs patients and resamples, got {patients} patient(s) "
                         f"and {resamples} resample(s)")
    draws = np.random.default_rng(seed).integers(0, patients, size=(resamples, patients))
    draws += np.arange(resamples)[:, None] * patients
    return np.bincount(draws.ravel(), minlength=resamples * patients).reshape(resamples, patients)


def _rate(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * num / np.maximum(den, 1), np.nan)


def score_arrays(cm, dataset: str | None = None) -> dict:
    """`metrics.scores` over any leading axes of ``cm`` [..., C, C]; a rate whose
    denominator is 0 is NaN here (undefined), not 0."""
    cm = np.asarray(cm)
    support = cm.sum(axis=-1)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    sp = _rate(diag[..., 0], support[..., 0])
    se = _rate(diag[..., 1:].sum(axis=-1), support[..., 1:].sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        hs = np.where(se + sp > 0, 2 * se * sp / (se + sp), np.where(np.isnan(se + sp), np.nan, 0))
    out = {"sp": sp, "se": se, "score": (se + sp) / 2, "hs": hs}
    if dataset is not None and sources.get(dataset).sprsound_score:
        out["sprsound_score"] = (out["score"] + hs) / 2
    return out


def interval(values, level: float = LEVEL) -> list | None:
    """The percentile interval of the defined (non-NaN) values; None when none is."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return None
    tail = (100.0 - level) / 2
    return [float(x) for x in np.percentile(v, [tail, 100.0 - tail])]


def _resampled(cms: np.ndarray, counts: np.ndarray, dataset) -> dict:
    c = cms.shape[-1]  # float64 counts: exact below 2**53, and a BLAS matrix product
    pooled = counts.astype(np.float64) @ cms.reshape(len(cms), c * c).astype(np.float64)
    return score_arrays(pooled.reshape(len(counts), c, c), dataset)


def bootstrap(p: Predictions, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> dict:
    """``{metric: [low, high]}``: percentile intervals of Sp, Se, Score, HS (and SPRSound's
    score) over ``resamples`` resamples of the test patients (docs/method.md §11); None for
    a figure never defined in a resample, and for every figure of a single patient."""
    _, cms = patient_confusions(p)
    boot = _resampled(cms, resample_counts(len(cms), resamples, seed), p.dataset)
    if len(cms) < 2:  # one patient: every resample is the same; there is nothing to say
        return {k: None for k in boot}
    return {k: interval(v, level) for k, v in boot.items()}


def bootstrap_record(p: Predictions, resamples: int = RESAMPLES) -> dict:
    """What results.json records of the bootstrap, beside its intervals."""
    return {"unit": "patient", "resamples": int(resamples), "seed": SEED, "level": LEVEL,
            "patients": int(len(np.unique(p.patient))), "cycles": len(p)}


def check_same_cycles(a: Predictions, b: Predictions, names=("A", "B")) -> np.ndarray:
    """Rows of ``b`` in the order of ``a``'s cycles; ValueError naming what differs when the
    two were not evaluated on the same cycles (dataset, cycles, annotated class, patient)."""
    if a.dataset != b.dataset or a.classes != b.classes:
        raise ValueError(f"{names[0]} is a {a.dataset} run with classes {a.classes}, {names[1]} "
                         f"a {b.dataset} run with classes {b.classes}: not the same test cycles")
    ka, kb = a.keys(), b.keys()
    for name, keys in zip(names, (ka, kb)):
        if len(set(keys)) != len(keys):
            raise ValueError(f"{name} names a cycle (recording, index) twice")
    where = {k: i for i, k in enumerate(kb)}
    only_a = [k for k in ka if k not in where]
    only_b = sorted(set(kb) - set(ka))
    if only_a or only_b:
        def show(keys):
            return ", ".join(f"{s}#{i}" for s, i in keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise ValueError(
            f"{names[0]} and {names[1]} were evaluated on different test cycles: {len(ka)} vs "
            f"{len(kb)} cycles; {len(only_a)} only in {names[0]} ({show(only_a)}), "
            f"{len(only_b)} only in {names[1]} ({show(only_b)})")
    rows = np.array([where[k] for k in ka], np.int64)
    classes = np.asarray(a.classes)
    for what, x, y in (("annotated class", classes[a.label], classes[b.label[rows]]),
                       ("patient", a.patient, b.patient[rows])):
        bad = np.flatnonzero(x != y)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{names[0]} and {names[1]} differ in the {what} of {bad.size} "
                             f"cycle(s), e.g. {a.stem[i]}#{a.index[i]}: {x[i]!r} vs {y[i]!r}")
    return rows


def paired(a: Predictions, b: Predictions, resamples: int = RESAMPLES, seed: int = SEED,
           level: float = LEVEL, names=("A", "B")) -> dict:
    """``{metric: {'a', 'b', 'difference', 'interval', 'p'}}`` for Sp, Se, Score (and the
    other reported metrics) of A - B on the same test cycles: both are scored on the same
    patient resamples. ``p``: two-sided, (1 + k) / (R + 1) doubled and capped at 1, where k
    counts the resampled differences on the far side of 0 (docs/method.md §11)."""
    b = b.take(check_same_cycles(a, b, names))
    _, cms_a = patient_confusions(a)
    _, cms_b = patient_confusions(b)
    counts = resample_counts(len(cms_a), resamples, seed)
    boot_a, boot_b = _resampled(cms_a, counts, a.dataset), _resampled(cms_b, counts, b.dataset)
    point_a, point_b = a.scores(), b.scores()
    out = {}
    for k in boot_a:
        d = boot_a[k] - boot_b[k]
        d = d[~np.isnan(d)]
        far = min(int((d <= 0).sum()), int((d >= 0).sum()))
        out[k] = {"a": point_a[k], "b": point_b[k], "difference": point_a[k] - point_b[k],
                  "interval": interval(d, level),
                  "p": min(1.0, 2 * (1 + far) / (d.size + 1)) if d.size else None}
    return {"metrics": out, "cycles": len(a), "patients": len(cms_a),
            "resamples": int(resamples), "seed": seed, "level": level}


def subgroups(p: Predictions, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL, order: dict | None = None) -> list:
    """One row per value of each metadata field ('' = unknown, last): cycles, patients,
    Sp / Se / Score (NaN when the subgroup has no cycle to count) and their intervals from
    resampling the subgroup's patients. ``order``: field -> values in display order (the
    schema's vocabularies); others follow sorted."""
    rows = []
    for field, values in p.fields.items():
        present = set(values.tolist())
        known = [v for v in (order or {}).get(field, ()) if v in present]
        known += sorted(present - set(known) - {""}) + ([""] if "" in present else [])
        for value in known:
            sub = p.take(np.flatnonzero(values == value))
            _, cms = patient_confusions(sub)
            point = score_arrays(cms.sum(axis=0), p.dataset)
            ci = bootstrap(sub, resamples, seed, level)
            rows.append({"field": field, "value": value, "cycles": len(sub),
                         "patients": len(cms),
                         **{k: {"value": float(point[k]), "interval": ci[k]}
                            for k in ("sp", "se", "score")}})
    return rows


# ------------------------------------------------------------------------------------------
# Over seeds


def across_seeds(values, level: float = LEVEL, bounds=(0.0, 100.0)) -> dict:
    """A sweep's figure: mean, population std (the tables' ±), and the t interval of the mean
    over seeds, mean ± t(n-1) s / sqrt(n) with the sample std s (None for one seed), cut to
    the metric's range `bounds` (two spread-out seeds give t(1) = 12.7 half-widths past 100)."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    out = {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size),
           "interval": None}
    if v.size > 1:
        half = stats.t.ppf(0.5 + level / 200, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
        low, high = v.mean() - half, v.mean() + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out["interval"] = [float(low), float(high)]
    return out


def welch(a, b, level: float = LEVEL) -> dict:
    """Welch's t-test of mean(a) - mean(b) (unequal variances; scipy) with its interval. Two
    sets without spread have no t: p is 1 when their means are equal, else None."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's test needs at least 2 seeds per sweep, got {a.size} and "
                         f"{b.size}")
    d = float(a.mean() - b.mean())
    if a.var() == 0 and b.var() == 0:  # no spread: no t; equal means differ by nothing
        return {"difference": d, "t": None, "df": None, "p": 1.0 if d == 0 else None,
                "interval": [d, d]}
    r = stats.ttest_ind(a, b, equal_var=False)
    ci = r.confidence_interval(level / 100)
    return {"difference": d, "t": float(r.statistic), "df": float(r.df),
            "p": float(r.pvalue), "interval": [float(ci.low), float(ci.high)]}
