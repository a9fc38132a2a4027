"""Challenge metrics (docs/method.md §6): confusion matrix, Sp, Se, Score, HS, SPRSound score, recalls.

Class 0 is the normal class (``data.normal_class``: `configuration.resolve` puts it first, for
every dataset); every other class is abnormal. Sp is the recall
of the normal class; Se counts an abnormal cycle as detected only when it gets its exact class
(a wheeze predicted as a crackle is a miss). All scores are in percent (0-100).

Empty classes: a rate whose denominator is 0 (no normal cycle for Sp, no abnormal cycle for
Se, no cycle of a class for its recall) is defined as 0, as is HS when Se + Sp = 0, so no
score is ever NaN. ``support`` (cycles per true class) tells an empty class from a missed one.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from resp_jax.data import sources

# The metrics a run reports, in table order, with their display names (results.json, report,
# sweep).
NAMES = {"sp": "Sp", "se": "Se", "score": "Score", "hs": "HS",
         "sprsound_score": "SPRSound score"}
REPORTED = tuple(NAMES)
# Beside them in tables: the mean test Score over the last epochs of a run's selection stage
# (results.json ``test_score_recent``), which test_best selection cannot inflate.
RECENT = "score_recent"
TABLE_NAMES = {**NAMES, RECENT: "Score, last epochs"}


def _as_int_vector(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes: int, mask=None) -> np.ndarray:
    """[C, C] int64 counts, rows the true class, columns the predicted class.

    Rows with mask 0 (padding) are left out whatever their values; every other row must have
    both indices in [0, num_classes), else ValueError naming the first offending row.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (normal + abnormal), got {num_classes}")
    t = _as_int_vector("y_true", y_true)
    p = _as_int_vector("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != t.shape:
            raise ValueError(f"mask must have shape {t.shape}, got {m.shape}")
        keep = m > 0
        t, p = t[keep], p[keep]
        rows = np.flatnonzero(keep)
    else:
        rows = np.arange(t.shape[0])
    for name, a in (("y_true", t), ("y_pred", p)):
        bad = (a < 0) | (a >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{rows[i]}] = {a[i]} is not a class index in "
                             f"[0, {num_classes})")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _rate(num, den) -> float:
    return 100.0 * float(num) / float(den) if den > 0 else 0.0


def scores(cm, dataset: Optional[str] = None) -> dict:
    """Scores of a confusion matrix, in percent.

    Returns 'sp', 'se', 'score' = (Se + Sp) / 2, 'hs' = 2 Se Sp / (Se + Sp), 'recall' (per
    class, list) and 'support' (cycles per true class, list); with a SPRSound dataset also
    'sprsound_score' = (Score + HS) / 2. The classes are the run's (``data.classes``): a
    dataset is scored in its own classes, a protocol's (SPRSound's challenge tasks) or,
    evaluated by another dataset's model, in the classes a class map gives
    (docs/method.md §13), so ``dataset`` (a ``data.name``) only decides the challenge score.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square [C, C] with C >= 2, got {cm.shape}")
    source = None if dataset is None else sources.get(dataset)
    if np.any(cm < 0):
        raise ValueError("confusion matrix has negative counts")
    support = cm.sum(axis=1)
    diag = np.diag(cm)
    sp = _rate(diag[0], support[0])
    se = _rate(diag[1:].sum(), support[1:].sum())
    out = {
        "sp": sp,
        "se": se,
        "score": (se + sp) / 2,
        "hs": 2 * se * sp / (se + sp) if se + sp > 0 else 0.0,
        "recall": [_rate(d, s) for d, s in zip(diag, support)],
        "support": [int(s) for s in support],
    }
    if source is not None and source.sprsound_score:
        out["sprsound_score"] = (out["score"] + out["hs"]) / 2
    return out


def summarize(y_true, y_pred, mask=None, dataset: Optional[str] = None,
              num_classes: Optional[int] = None) -> dict:
    """`scores` of the predictions plus the confusion matrix (nested lists, for logging).

    ``num_classes`` defaults to the class count of a dataset with fixed classes; one of the
    two is required.
    """
    if num_classes is None:
        classes = () if dataset is None else sources.get(dataset).classes
        if not classes:
            raise ValueError(f"summarize needs num_classes or dataset (one whose classes are "
                             f"fixed), got dataset {dataset!r}")
        num_classes = len(classes)
    cm = confusion_matrix(y_true, y_pred, num_classes, mask)
    out = scores(cm, dataset)
    out["confusion_matrix"] = cm.tolist()
    return out
