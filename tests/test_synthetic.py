"""Synthetic datasets: the real layouts and quirks (read back through the readers), sounds
that carry their labels, demographic/label correlation, determinism, the full-size stand-in
from real annotation files, the cached default dataset and the CLI."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import soundfile as sf
from scipy.stats import chi2_contingency

from resp_jax.data import icbhi, readers, sources, sprsound, synthetic, wav_checks

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_icbhi(tmp_path_factory) -> Path:
    return synthetic.write_icbhi(tmp_path_factory.mktemp("icbhi") / "root", recordings=12,
                                 seed=3)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    for dataset in ("icbhi", "sprsound"):
        synthetic.default_dataset(dataset, cache_dir=cache)
    return cache


def test_icbhi_layout_and_quirks(small_icbhi):
    root = small_icbhi
    result = icbhi.read(root)
    assert result.skipped == []
    stems = sorted({c.stem for c in result.cycles})
    assert len(stems) == 12
    assert sorted(p.stem for p in (root / icbhi.AUDIO_DIR).glob("*.wav")) == stems
    infos = [wav_checks.wav_info(root / icbhi.AUDIO_DIR / f"{s}.wav") for s in stems]
    assert {i.samplerate for i in infos} == {4000, 10000, 44100}
    assert {i.subtype for i in infos} == {"PCM_16", "PCM_24", "PCM_32"}
    assert {c.device for c in result.cycles} == {"AKGC417L", "LittC2SE", "Litt3200", "Meditron"}
    for c in result.cycles:   # the rate follows the device
        rate = wav_checks.wav_info(c.wav_path).samplerate
        assert rate == 4000 if c.device == "Litt3200" else rate in (10000, 44100)
    # CRLF split file with one entry naming the wrong device, still matched.
    split = (root / icbhi.SPLIT_FILE).read_bytes()
    assert split.count(b"\r\n") == 12
    written = {line.split(b"\t")[0].decode() for line in split.splitlines()}
    wrong = written - set(stems)
    assert len(wrong) == 1 and wrong.pop().endswith("_Meditron")
    # Demographics: CRLF, tab separated, one patient with everything NA.
    demo = (root / icbhi.DEMOGRAPHICS_FILES[0]).read_bytes()
    assert b"\tNA\tNA\tNA\tNA\tNA\r\n" in demo
    assert any(c.sex is None and c.age_group is None for c in result.cycles)
    # Some cycle ends past the end of its audio and is clamped.
    ends = {(c.stem, c.index): c.end for c in icbhi.read(root, annotations_only=True).cycles}
    clamped = [c for c in result.cycles if c.end < ends[(c.stem, c.index)]]
    assert clamped
    for c in clamped:
        assert c.end == pytest.approx(wav_checks.wav_info(c.wav_path).duration)
    # Patient-disjoint splits, both with every class.
    train, test = result.split("train"), result.split("test")
    assert not {c.patient for c in train} & {c.patient for c in test}
    assert {c.label for c in train} == {c.label for c in test} == {0, 1, 2, 3}


def _tonality(seg, sr) -> float:
    """Largest spectral peak in 170-1200 Hz over the local (400 Hz) median of the spectrum."""
    f, p = scipy.signal.welch(seg, sr, nperseg=int(0.1 * sr))
    base = scipy.ndimage.median_filter(p, size=41, mode="nearest")
    band = (f >= 170) & (f <= 1200)
    return float((p[band] / base[band]).max())


def _clicks_per_second(seg, sr) -> float:
    """4 ms frames of the > 300 Hz signal holding 10x the energy of their ~200 ms median."""
    hp = scipy.signal.sosfilt(scipy.signal.butter(4, min(300, sr / 4), "highpass", fs=sr,
                                                  output="sos"), seg)
    fl = max(4, int(0.004 * sr))
    e = (hp[: len(hp) // fl * fl].reshape(-1, fl) ** 2).mean(1)
    base = scipy.ndimage.median_filter(e, size=51, mode="nearest")
    return float((e > 10 * base).sum() / (len(seg) / sr))


def test_icbhi_sounds_carry_their_labels(small_icbhi):
    """Wheeze cycles hold a tonal peak; crackle cycles hold clicks; normal cycles rarely."""
    tonal, clicks = {k: [] for k in range(4)}, {k: [] for k in range(4)}
    for c in icbhi.read(small_icbhi).cycles:
        wave, sr = sf.read(c.wav_path, dtype="float32")
        seg = wave[int(c.start * sr):int(c.end * sr)]
        tonal[c.label].append(_tonality(seg, sr) > 4)
        clicks[c.label].append(_clicks_per_second(seg, sr) >= 1)
    rate = lambda d, ks: np.mean(sum((d[k] for k in ks), []))  # noqa: E731
    assert rate(tonal, (2, 3)) > 0.4 and rate(tonal, (0, 1)) < 0.1
    assert rate(clicks, (1, 3)) > 0.5 and rate(clicks, (0, 2)) < 0.1


@pytest.mark.slow  # writes the default synthetic dataset
def test_labels_correlate_with_demographics(defaults):
    def p_value(dataset, field):
        root = defaults / f"{dataset}-{synthetic.CACHE_VERSION}"
        result = readers.read(dataset, root, annotations_only=True)
        values = sorted({getattr(c, field) for c in result.cycles} - {None})
        table = np.zeros((len(values), len(sources.get(dataset).classes)))
        for c in result.cycles:
            if getattr(c, field) is not None:
                table[values.index(getattr(c, field)), c.label] += 1
        return chi2_contingency(table[:, table.sum(0) > 0])[1]
    assert p_value("icbhi", "age_group") < 1e-3
    assert p_value("icbhi", "diagnosis") < 1e-6
    assert p_value("sprsound", "age_group") < 1e-3


def test_deterministic_for_a_seed_and_any_worker_count(tmp_path):
    a = synthetic.write_icbhi(tmp_path / "a", recordings=4, seed=7)
    b = synthetic.write_icbhi(tmp_path / "b", recordings=4, seed=7, workers=2)
    c = synthetic.write_icbhi(tmp_path / "c", recordings=4, seed=8)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    s1 = synthetic.write_sprsound(tmp_path / "s1", recordings=5, seed=1)
    s2 = synthetic.write_sprsound(tmp_path / "s2", recordings=5, seed=1)
    assert tree_digest(s1) == tree_digest(s2)


REAL_SUBSET = ("101_1b1_Al_sc_Meditron", "104_1b1_Ar_sc_Litt3200", "107_2b3_Al_mc_AKGC417L",
               "130_1p2_Al_mc_AKGC417L", "226_1b1_Pl_sc_LittC2SE", "223_1b1_Pr_sc_Meditron")


def test_from_annotations_writes_a_wav_per_annotation_file(icbhi_real, tmp_path):
    src = tmp_path / "src"
    (src / icbhi.AUDIO_DIR).mkdir(parents=True)
    for stem in REAL_SUBSET:
        shutil.copyfile(icbhi_real / icbhi.AUDIO_DIR / f"{stem}.txt",
                        src / icbhi.AUDIO_DIR / f"{stem}.txt")
    keep = {icbhi.split_key(s) for s in REAL_SUBSET}
    lines = (icbhi_real / icbhi.SPLIT_FILE).read_bytes().splitlines(keepends=True)
    (src / icbhi.SPLIT_FILE).write_bytes(b"".join(
        line for line in lines if icbhi.split_key(line.split(b"\t")[0].decode()) in keep))
    for name in (icbhi.DEMOGRAPHICS_FILES[0], icbhi.DIAGNOSIS_FILE):
        shutil.copyfile(icbhi_real / name, src / name)

    out = synthetic.write_icbhi(tmp_path / "out", from_annotations=src)
    expected = icbhi.read(src, annotations_only=True)
    got = icbhi.read(out)
    assert got.skipped == []
    key = lambda c: (c.stem, c.split, c.start, c.end, c.label, c.sex, c.age_group,  # noqa: E731
                     c.diagnosis)
    assert [key(c) for c in got.cycles] == [key(c) for c in expected.cycles]  # nothing clamped
    for stem in REAL_SUBSET:
        assert (out / icbhi.AUDIO_DIR / f"{stem}.txt").read_bytes() == \
            (src / icbhi.AUDIO_DIR / f"{stem}.txt").read_bytes()
    for name in (icbhi.SPLIT_FILE, icbhi.DEMOGRAPHICS_FILES[0], icbhi.DIAGNOSIS_FILE):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    for stem in REAL_SUBSET:
        info = wav_checks.wav_info(out / icbhi.AUDIO_DIR / f"{stem}.wav")
        last = max(c.end for c in got.cycles if c.stem == stem)
        assert info.duration >= last
        if stem.endswith("Litt3200"):
            assert info.samplerate == 4000


def test_from_annotations_accepts_files_directly_in_root(tmp_path):
    src = synthetic.write_icbhi(tmp_path / "src", recordings=4, seed=2)
    for p in (src / icbhi.AUDIO_DIR).iterdir():
        if p.suffix == ".txt":
            p.rename(src / p.name)
        else:
            p.unlink()
    (src / icbhi.AUDIO_DIR).rmdir()
    out = synthetic.write_icbhi(tmp_path / "out", from_annotations=src)
    assert [(c.stem, c.start) for c in icbhi.read(out, annotations_only=True).cycles] == \
        [(c.stem, c.start) for c in icbhi.read(src, annotations_only=True).cycles]
    assert len(list((out / icbhi.AUDIO_DIR).glob("*.wav"))) == 4
    assert icbhi.read(out).skipped == []


@pytest.mark.parametrize("layout", ["plain", "biocas"])
def test_sprsound_layouts_splits_and_format(tmp_path, layout):
    root = synthetic.write_sprsound(tmp_path / "spr", recordings=12, seed=4, layout=layout)
    folders = sprsound.find_layout(root)
    if layout == "biocas":
        assert folders["train_json"] == root / "BioCAS2022" / "train2022_json"
    result = sprsound.read(root)
    assert result.skipped == []
    patients = {s: {c.patient for c in result.split(s)} for s in sprsound.SPLITS}
    assert all(patients.values())
    assert not patients["inter_test"] & (patients["train"] | patients["intra_test"])
    assert patients["intra_test"] <= patients["train"]
    assert len({len(p) for p in patients["train"] | patients["inter_test"]}) > 1
    unsorted = 0
    for js in folders["train_json"].glob("*.json"):
        text = js.read_text()
        assert "\n" not in text
        events = json.loads(text)["event_annotation"]
        starts = [int(e["start"]) for e in events]
        unsorted += starts != sorted(starts)
        assert all(isinstance(e["start"], str) and isinstance(e["end"], str) for e in events)
        info = wav_checks.wav_info(folders["train_wav"] / f"{js.stem}.wav")
        assert (info.samplerate, info.subtype) == (8000, "PCM_16")
    assert unsorted > 0


def test_default_dataset_is_made_once_and_cached(defaults, caplog):
    icbhi_root = defaults / f"icbhi-{synthetic.CACHE_VERSION}"
    assert (icbhi_root / ".complete").is_file()
    result = icbhi.read(icbhi_root)
    assert len({c.stem for c in result.cycles}) == icbhi.SOURCE.synthetic_default
    assert 1000 <= len(result.cycles) <= 1700
    counts = np.bincount([c.label for c in result.split("train")], minlength=4)
    assert counts.min() >= 0.08 * counts.sum()      # no class starved
    spr = sprsound.read(defaults / f"sprsound-{synthetic.CACHE_VERSION}")
    assert {c.label for c in spr.split("train")} == set(range(7))
    assert not [p for p in defaults.iterdir() if p.name.startswith(".")]  # no temp leftovers

    wav = next((icbhi_root / icbhi.AUDIO_DIR).glob("*.wav"))
    before = wav.stat().st_mtime_ns
    # absl's logger has its own level, which other tests (absl apps) may have changed.
    with caplog.at_level(logging.INFO, logger="absl"):
        assert synthetic.default_dataset("icbhi", cache_dir=defaults) == icbhi_root
    assert wav.stat().st_mtime_ns == before
    assert any("synthetic" in r.getMessage() and str(icbhi_root) in r.getMessage()
               for r in caplog.records)


def test_default_dataset_replaces_an_incomplete_leftover(tmp_path):
    leftover = tmp_path / f"sprsound-{synthetic.CACHE_VERSION}"
    leftover.mkdir()
    (leftover / "junk.txt").write_text("half written")
    root = synthetic.default_dataset("sprsound", cache_dir=tmp_path)
    assert root == leftover and not (root / "junk.txt").exists()
    assert sprsound.read(root).cycles


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        synthetic.write_icbhi(tmp_path / "a", recordings=1)
    with pytest.raises(ValueError, match="patients=5"):
        synthetic.write_icbhi(tmp_path / "a", recordings=4, patients=5)
    with pytest.raises(ValueError, match="layout"):
        synthetic.write_sprsound(tmp_path / "b", layout="2023")
    with pytest.raises(ValueError, match="unknown dataset"):
        synthetic.default_dataset("esc50", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_patients_share_the_recordings(tmp_path):
    """``patients`` sets how many patients the recordings are spread over (one each here),
    both splits keep whole patients."""
    result = icbhi.read(synthetic.write_icbhi(tmp_path / "p", recordings=6, patients=6),
                        annotations_only=True)
    by_patient = {}
    for c in result.cycles:
        by_patient.setdefault(c.patient, set()).add((c.stem, c.split))
    assert len(by_patient) == 6 and all(len(v) == 1 for v in by_patient.values())
    assert {c.split for c in result.cycles} == {"train", "test"}


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("something else")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.write_icbhi(tmp_path, recordings=2)
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.write_sprsound(tmp_path, recordings=3)
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_cli_writes_what_the_function_writes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "resp_jax.data.synthetic", "--dataset=sprsound",
         f"--out={tmp_path / 'cli'}", "--recordings=6", "--seed=5"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("wrote 6 recordings")
    ref = synthetic.write_sprsound(tmp_path / "ref", recordings=6, seed=5)
    assert tree_digest(tmp_path / "cli") == tree_digest(ref)
