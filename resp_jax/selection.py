"""Model selection (docs/method.md §5): which epoch a run reports, and the validation split it may use.

Protocols:
  test_best  the epoch with the best test Score (the paper's protocol; optimistic);
  val        the epoch with the best Score on a patient-disjoint validation split carved from
             the training split (seed-controlled); the test metrics of that epoch are reported;
  last       the last epoch.
Ties keep the earlier epoch.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

PROTOCOLS = ("test_best", "val", "last")
VAL_SPLIT = "val"


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

    @property
    def criterion_split(self) -> str | None:
        return {"test_best": "test", "val": VAL_SPLIT, "last": None}[self.protocol]

    def update(self, epoch: int, results: Mapping[str, Mapping[str, Any]]) -> bool:
        """Takes one epoch's metrics per split ({'test': {...}, 'val': {...}}); True when this
        epoch becomes the selected one."""
        split = self.criterion_split
        if split is not None and split not in results:
            raise KeyError(f"selection {self.protocol!r} needs {split!r} metrics at epoch {epoch}")
        criterion = None if split is None else float(results[split]["score"])
        if split is not None and self.best is not None and not criterion > self.best["criterion"]:
            return False
        self.best = {"epoch": int(epoch), "criterion": criterion,
                     **{s: dict(m) for s, m in results.items()}}
        return True

    def state_dict(self) -> dict:
        return {"protocol": self.protocol, "best": self.best}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Selector":
        selector = cls(state["protocol"])
        selector.best = state["best"]
        return selector
