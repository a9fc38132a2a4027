"""A synthetic HF_Lung_V1 root in its layout (`hf_lung`): ``train/`` and ``test/`` with 15 s,
4 kHz recordings ``<stem>.wav`` and their ``<stem>_label.txt``: inhalation and exhalation
phases (some left unlabelled, as in the real files) and the adventitious events heard in them
(Wheeze, Stridor, Rhonchi: CAS; D: crackles), some spanning two phases, in shuffled order.
One label file is empty and one repeats a phase span as I and E, as real files do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resp_jax.data import hf_lung
from resp_jax.data.synthetic.sounds import Sound, _breath_cycles, _fresh, _Recording, _render_all

RECORDINGS = 40
RATE = 4000
DURATION = 15.0
# Phase class probabilities (hf_lung.CLASSES order) of a recording session's subject: most
# subjects breathe normally, others have CAS, DAS or both in many phases.
_SUBJECTS = ((0.9, 0.04, 0.04, 0.02), (0.35, 0.5, 0.05, 0.1), (0.35, 0.05, 0.5, 0.1),
             (0.3, 0.25, 0.25, 0.2))
_TONE_EVENT = {"wheeze": "Wheeze", "stridor": "Stridor", "rhonchi": "Rhonchi"}


def _time(t: float) -> str:
    h, rest = divmod(t, 3600.0)
    m, s = divmod(rest, 60.0)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def _phases(rng) -> np.ndarray:
    """[(start, end)] of alternating inhalation and exhalation phases over 15 s."""
    out = []
    for start, end in _breath_cycles(DURATION, False, rng):
        split = start + rng.uniform(0.35, 0.45) * (end - start)
        out += [(start, split), (split, end)]
    return np.asarray([p for p in out if p[1] <= DURATION]).reshape(-1, 2)


def _recording(stem: str, probs, rng) -> tuple:
    """``(label lines, _Recording)``: each phase's class drawn from ``probs`` and rendered;
    every adventitious phase gets an event over its middle 80 %, merged with the next
    phase's when both hold the same sound."""
    phases = _phases(rng)
    labels = rng.choice(len(hf_lung.CLASSES), len(phases), p=probs)
    tones = [str(rng.choice(list(_TONE_EVENT), p=(0.6, 0.1, 0.3))) for _ in phases]
    sounds, events = [], []
    for k, ((a, b), label) in enumerate(zip(phases, labels)):
        cas, das = label in (1, 3), label in (2, 3)
        sounds.append(Sound(crackle=("fine" if rng.random() < 0.5 else "coarse") if das else None,
                            tone=tones[k] if cas else None,
                            distract=not (cas or das) and rng.random() < 0.15))
        inner = (a + 0.1 * (b - a), b - 0.1 * (b - a))
        for kind, present in ((_TONE_EVENT[tones[k]], cas), ("D", das)):
            if not present:
                continue
            if events and events[-1][0] == kind and events[-1][3] == k - 1:
                events[-1] = (kind, events[-1][1], inner[1], k)   # one event over both
            else:
                events.append((kind, inner[0], inner[1], k))
    lines = [f"{'IE'[k % 2]} {_time(a)} {_time(b)}" for k, (a, b) in enumerate(phases)
             if k % 2 == 0 or rng.random() < 0.6]          # some exhalations unlabelled
    lines += [f"{kind} {_time(a)} {_time(b)}" for kind, a, b, _ in events]
    lines = [lines[j] for j in rng.permutation(len(lines))]
    device = "Litt3200" if stem.startswith("steth") else "Meditron"   # a colouring each
    rec = _Recording(stem=stem, sr=RATE, n=int(DURATION * RATE), cycles=phases, sounds=sounds,
                     device=device, child=False, subtype="PCM_16")
    return lines, rec


def write_hf_lung(out, *, recordings: int = RECORDINGS, seed: int = 0, workers: int = 1) -> Path:
    """Writes a synthetic HF_Lung_V1 root of about ``recordings`` files into ``out``; returns
    ``out``. Recording sessions are ``steth`` recordings (one file) or ``trunc`` sessions (two
    channels, two segments each); a fifth of the sessions are test sessions."""
    if recordings < 4:
        raise ValueError(f"recordings={recordings}; expected at least 4 (a session per split)")
    out = _fresh(out)
    rng = np.random.default_rng(seed)
    sessions, day = [], 0
    while sum(len(names) for names in sessions) < recordings:
        day += 1
        date = f"2019-{1 + day // 28:02d}-{1 + day % 28:02d}"
        h, m, s = (int(v) for v in rng.integers(0, (24, 60, 60)))
        if day % 2:
            sessions.append([f"steth_{date.replace('-', '')}_{h:02d}_{m:02d}_{s:02d}"])
        else:
            start = f"{date}-{h:02d}-{m:02d}-{s:02d}"
            sessions.append([f"trunc_{start}-L{c}_{n}" for c in (1, 2) for n in (1, 2)])
    test = set(rng.choice(len(sessions), max(1, round(0.2 * len(sessions))), replace=False))
    recs = {"train": [], "test": []}
    written = 0
    for i, names in enumerate(sessions):
        split = "test" if i in test else "train"
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        probs = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
        for stem in names:
            lines, rec = _recording(stem, probs, rng)
            if written == 1:
                lines = []                                   # an empty label file
            elif written == 2 and lines:
                first = next(l for l in lines if l.startswith("I "))
                lines.append("E" + first[1:])                # an I and an E on one span
            (folder / f"{stem}{hf_lung.LABEL_SUFFIX}").write_text(
                "".join(l + "\n" for l in lines))
            recs[split].append(rec)
            written += 1
    for split, group in recs.items():
        _render_all(group, seed, out / split, workers)
    return out
