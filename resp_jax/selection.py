"""Model selection (docs/method.md §5): which epoch a run reports, and the validation split it may use.

Protocols:
  test_best  the epoch with the best test Score (the paper's protocol; optimistic);
  val        the epoch with the best Score on a patient-disjoint validation split carved from
             the training split (seed-controlled); the test metrics of that epoch are reported;
  last       the last epoch.
Ties keep the earlier epoch.

Selecting on the test split picks the top of the epoch-to-epoch swing of the test Score, which
is large at the paper's linear lr 0.1; the selector therefore also keeps every epoch's test
Score, and `recent` gives the mean and standard deviation of the last ones (results.json
``test_score_recent``), a figure that selection cannot inflate.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

PROTOCOLS = ("test_best", "val", "last")
VAL_SPLIT = "val"
RECENT_EPOCHS = 10  # epochs at the end of the selection stage summarised by `recent`


def val_mask(patients, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over training cycles: True for cycles moved to the validation split.

    Whole patients move: they are shuffled with ``seed`` and taken in that order until at least
    ``fraction`` of the cycles are in validation, so no patient is in both splits.
    """
    patients = np.asarray(patients).astype(str)
    unique = np.unique(patients)
    if len(unique) < 2:
        raise ValueError(f"a patient-disjoint validation split needs at least 2 training "
                         f"patients, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    counts = {p: int(n) for p, n in zip(*np.unique(patients, return_counts=True))}
    target = fraction * len(patients)
    chosen, total = [], 0
    for p in order[:-1]:  # at least one patient stays in training
        chosen.append(p)
        total += counts[p]
        if total >= target:
            break
    return np.isin(patients, chosen)


class Selector:
    """Tracks the selected epoch while evaluations come in (saved in checkpoints)."""

    def __init__(self, protocol: str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"selection protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.best: dict[str, Any] | None = None
        self.history: list[list] = []  # [epoch, test Score] of every evaluated epoch

    @property
    def criterion_split(self) -> str | None:
        return {"test_best": "test", "val": VAL_SPLIT, "last": None}[self.protocol]

    def update(self, epoch: int, results: Mapping[str, Mapping[str, Any]]) -> bool:
        """Takes one epoch's metrics per split ({'test': {...}, 'val': {...}}); True when this
        epoch becomes the selected one."""
        split = self.criterion_split
        if split is not None and split not in results:
            raise KeyError(f"selection {self.protocol!r} needs {split!r} metrics at epoch {epoch}")
        if "test" in results:
            self.history.append([int(epoch), float(results["test"]["score"])])
        criterion = None if split is None else float(results[split]["score"])
        if split is not None and self.best is not None and not criterion > self.best["criterion"]:
            return False
        self.best = {"epoch": int(epoch), "criterion": criterion,
                     **{s: dict(m) for s, m in results.items()}}
        return True

    def recent(self, n: int = RECENT_EPOCHS) -> dict | None:
        """Mean and population std of the test Score over the last ``n`` evaluated epochs."""
        if not self.history:
            return None
        last = self.history[-n:]
        scores = np.array([score for _, score in last], np.float64)
        return {"epochs": [last[0][0], last[-1][0]], "mean": float(scores.mean()),
                "std": float(scores.std())}

    def state_dict(self) -> dict:
        return {"protocol": self.protocol, "best": self.best, "history": self.history}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Selector":
        selector = cls(state["protocol"])
        selector.best = state["best"]
        selector.history = [list(h) for h in state.get("history", [])]
        return selector
