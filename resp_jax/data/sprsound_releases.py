"""SPRSound with its later challenge test sets (docs/method.md §1.3): ``data.name=
'sprsound_releases'``.

After the 2022 release, the organisers publish one new test set per BioCAS challenge in the
same JSON event format and file naming, to be classified by models trained on the 2022
training split (SJTU-YONGFU-RESEARCH-GRP/SPRSound at 174500e, BioCAS2023/README.md and
BioCAS2024/README.md): ``BioCAS<YEAR>/test<YEAR>_wav`` and ``test<YEAR>_json`` beside
``BioCAS2022``, in the repository's root or under ``releases/``. This Source reads the 2022
release as `sprsound` does ('train', 'inter_test', 'intra_test') and each later test set
found as the split ``test<YEAR>``; the one reported as 'test' is the newest found.

The later sets' quirks, handled here: the 2024 README lists recording locations p5-p8 beside
p1-p4; anonymised recordings have an empty patient id (``_3.9_0_p1_14465.wav`` in the 2023
folder; the 2025 README: "``_`` for anonymized"), whose patient is unknown (''); the 2024
JSON files have no ``record_annotation``, which no split here reads.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

from resp_jax.data import records, sources, sprsound
from resp_jax.data.wav_checks import Problems

NAME = "sprsound_releases"
LOCATIONS = tuple(f"p{k}" for k in range(1, 9))
VOCABS = (("sex", ("M", "F")), ("age_group", ("baby", "kid")), ("location", LOCATIONS))
_RELEASE = re.compile(r"^BioCAS(\d{4})$")
SYNTHETIC_YEARS = ("2023", "2024")   # the later test sets the synthetic writer makes


def releases(root) -> dict:
    """``{'test<YEAR>': (json folder, wav folder)}`` of every later release under ``root``
    (its folders ``BioCAS<YEAR>`` in ``root`` or ``root/releases``, the first found of a
    year), in year order."""
    found = {}
    for base in (Path(root), Path(root) / "releases"):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            m = _RELEASE.match(folder.name)
            year = m and m.group(1)
            if year and year > "2022" and (folder / f"test{year}_json").is_dir():
                found.setdefault(f"test{year}", (folder / f"test{year}_json",
                                                 folder / f"test{year}_wav"))
    return dict(sorted(found.items()))


def read(root, *, annotations_only: bool = False, skip_bad: bool = False,
         dropped: Optional[list] = None) -> records.ReadResult:
    """The 2022 release (`sprsound.read`), then every later test set in year order, each
    recording's events as `sprsound.recording_cycles` reads them."""
    first = sprsound.read(root, annotations_only=annotations_only, skip_bad=skip_bad,
                          dropped=dropped)
    cycles = [dataclasses.replace(c, dataset=NAME) for c in first.cycles]
    problems = Problems(skip_bad)
    dropped_here: list = []
    for split, (json_dir, wav_dir) in releases(root).items():
        wavs = None if annotations_only else sprsound.wav_index(wav_dir)
        for path in sorted(json_dir.rglob("*.json")):
            try:
                info = sprsound.parse_stem(path.stem, LOCATIONS, anonymous=True)
            except ValueError as e:
                problems.bad(path, str(e))
                continue
            cycles += sprsound.recording_cycles(path, split, info, problems, dropped_here,
                                                wavs=wavs, wav_folder=wav_dir, dataset=NAME)
    sprsound.warn_dropped(dropped_here)
    if dropped is not None:
        dropped.extend(dropped_here)
    return records.ReadResult(cycles=cycles, skipped=first.skipped + problems.skipped,
                              splits=sprsound.SPLITS + tuple(releases(root)),
                              classes=sprsound.CLASSES)


class SprsoundReleasesSource(sources.Source):
    """SPRSound 2022 plus every later challenge test set: trained on the 2022 train split,
    reported on the newest test set (or any other, with data.test_split)."""
    name, title = NAME, "SPRSound with its later test sets"
    classes, vocabs = sprsound.CLASSES, VOCABS
    epochs, class_weighted = sprsound.SOURCE.epochs, sprsound.SOURCE.class_weighted
    inspect_fields = ("sex", "age_group", "location")
    dropped_note = sprsound.SOURCE.dropped_note
    sprsound_score = True
    synthetic = "resp_jax.data.synthetic.sprsound_releases:write_sprsound_releases"
    synthetic_default = 60

    def read(self, root, *, annotations_only=False, skip_bad=False, schema=None, dropped=None):
        return read(root, annotations_only=annotations_only, skip_bad=skip_bad,
                    dropped=dropped)

    def splits_of(self, root) -> tuple:
        """The 2022 splits and each later test set found (no root: the synthetic default's)."""
        later = releases(root) if root else [f"test{y}" for y in SYNTHETIC_YEARS]
        return sprsound.SPLITS + tuple(later)

    def test_split_of(self, splits: tuple) -> str:
        later = [s for s in splits if s not in sprsound.SPLITS]
        return later[-1] if later else sprsound.SOURCE.test_split


SOURCE = SprsoundReleasesSource()
