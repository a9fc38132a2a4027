"""ICBHI 2017 reader: every layout quirk of docs/method.md §1.1 and every bad-input case, on hand-made
roots, plus the real annotation files and recordings in ../shared/data."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from resp_jax.data import icbhi, metadata, records, wav_checks

DB = icbhi.AUDIO_DIR
TAB_DEMO = (
    "101\t3\tF\tNA\t19\t99\r\n"
    "102\t70\tM\t33\tNA\tNA\r\n"
    "103\tNA\tNA\tNA\tNA\tNA\r\n"
    "104\t18\tF\tNA\t60\t170\r\n"
)
DIAGNOSIS = "101\tURTI\n102\tCOPD\n103\tHealthy\n104\tAsthma\n"


def write_wav(path: Path, seconds: float, sr: int = 4000, subtype: str = "PCM_16") -> int:
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 200 * t), sr, subtype=subtype, format="WAV")
    return n


def make_root(tmp_path: Path, *, in_db: bool = True, wavs: bool = True,
              annotations: dict = None, split: str = None, demographics=("tab", TAB_DEMO),
              diagnosis: str = DIAGNOSIS) -> Path:
    """A tiny ICBHI root. ``annotations``: stem -> annotation text (wav of 3 s at 4 kHz)."""
    root = tmp_path / "icbhi"
    folder = root / DB if in_db else root
    folder.mkdir(parents=True)
    if annotations is None:
        annotations = {
            "101_1b1_Al_sc_Meditron": "0.1\t1.0\t0\t0\n1.0\t2.0\t1\t0\n2.0\t2.9\t0\t1\n",
            "102_2b3_Tc_mc_AKGC417L": "0.036\t1.5\t1\t1\r\n1.5\t2.5\t0\t0\r\n",
            "103_1b1_Pl_sc_LittC2SE": "0.2\t2.0\t0\t0\n",
            "104_1p1_Lr_sc_Litt3200": "0.5\t2.5\t1\t0\n",
        }
    for stem, text in annotations.items():
        (folder / f"{stem}.txt").write_bytes(text.encode())
        if wavs:
            write_wav(folder / f"{stem}.wav", 3.0)
    if split is None:
        split = ("101_1b1_Al_sc_Meditron\ttest\r\n102_2b3_Tc_mc_AKGC417L\ttrain\r\n"
                 "103_1b1_Pl_sc_Meditron\ttrain\r\n104_1p1_Lr_sc_Litt3200\ttest\r\n")
    (root / icbhi.SPLIT_FILE).write_bytes(split.encode())
    if demographics is not None:
        kind, text = demographics
        name = icbhi.DEMOGRAPHICS_FILES[0] if kind == "tab" else "demographic_info.txt"
        (root / name).write_bytes(text.encode())
    (root / icbhi.DIAGNOSIS_FILE).write_text(diagnosis)
    return root


def by_stem(result):
    out = {}
    for c in result.cycles:
        out.setdefault(c.stem, []).append(c)
    return out


def test_reads_cycles_labels_splits_and_metadata(tmp_path):
    root = make_root(tmp_path)
    result = icbhi.read(root)
    assert result.skipped == []
    cycles = by_stem(result)
    assert sorted(cycles) == ["101_1b1_Al_sc_Meditron", "102_2b3_Tc_mc_AKGC417L",
                              "103_1b1_Pl_sc_LittC2SE", "104_1p1_Lr_sc_Litt3200"]
    c101 = cycles["101_1b1_Al_sc_Meditron"]
    # label = crackles + 2 * wheezes
    assert [(c.start, c.end, c.label, c.label_name) for c in c101] == [
        (0.1, 1.0, 0, "normal"), (1.0, 2.0, 1, "crackle"), (2.0, 2.9, 2, "wheeze")]
    assert [c.index for c in c101] == [0, 1, 2]
    c = c101[0]
    assert (c.dataset, c.split, c.patient, c.sex, c.age, c.age_group) == (
        "icbhi", "test", "101", "F", 3.0, "child")
    assert (c.device, c.location, c.mode, c.diagnosis) == ("Meditron", "Al", "sc", "URTI")
    assert c.wav_path == str(root / DB / "101_1b1_Al_sc_Meditron.wav")
    c102 = cycles["102_2b3_Tc_mc_AKGC417L"]   # CRLF annotation file
    assert [(c.start, c.end, c.label_name) for c in c102] == [(0.036, 1.5, "both"),
                                                              (1.5, 2.5, "normal")]
    assert (c102[0].split, c102[0].age_group, c102[0].mode, c102[0].diagnosis) == (
        "train", "adult", "mc", "COPD")
    assert [c.split for c in result.cycles].count("test") == 4


def test_split_entry_with_wrong_device_matches_on_stem_without_device(tmp_path):
    # The split file names 103_1b1_Pl_sc_Meditron; the file is 103_1b1_Pl_sc_LittC2SE.
    result = icbhi.read(make_root(tmp_path))
    c = by_stem(result)["103_1b1_Pl_sc_LittC2SE"][0]
    assert (c.split, c.device) == ("train", "LittC2SE")
    assert result.skipped == []


def test_na_demographics_give_unknown_sex_age_and_group(tmp_path):
    c = by_stem(icbhi.read(make_root(tmp_path)))["103_1b1_Pl_sc_LittC2SE"][0]
    assert (c.sex, c.age, c.age_group) == (None, None, None)
    assert metadata.encode(c, "sex") == -1
    assert metadata.encode(c, "sex+age_group") == -1
    assert metadata.encode(c, "label") == 0


def test_age_group_adult_only_above_18():
    assert icbhi.age_group(18.0) == "child"
    assert icbhi.age_group(18.5) == "adult"
    assert icbhi.age_group(0.25) == "child"
    assert icbhi.age_group(None) is None


def test_space_separated_demographics_variant_reads_the_same(tmp_path):
    tab = icbhi.read(make_root(tmp_path / "a"), annotations_only=True)
    space_text = TAB_DEMO.replace("\t", " ").replace("\r\n", "\n")
    space = icbhi.read(make_root(tmp_path / "b", demographics=("space", space_text)),
                       annotations_only=True)
    key = lambda c: (c.stem, c.start, c.sex, c.age, c.age_group, c.diagnosis)  # noqa: E731
    assert [key(c) for c in space.cycles] == [key(c) for c in tab.cycles]


def test_files_directly_in_root(tmp_path):
    nested = icbhi.read(make_root(tmp_path / "a"))
    flat_root = make_root(tmp_path / "b", in_db=False)
    (flat_root / "README.txt").write_text("not an annotation file\n")
    flat = icbhi.read(flat_root)
    strip = lambda c: (c.stem, c.split, c.start, c.end, c.label, c.sex)  # noqa: E731
    assert [strip(c) for c in flat.cycles] == [strip(c) for c in nested.cycles]
    assert flat.cycles[0].wav_path == str(flat_root / "101_1b1_Al_sc_Meditron.wav")


def test_cycle_past_the_end_of_the_audio_is_clamped(tmp_path):
    root = make_root(tmp_path, annotations={"101_1b1_Al_sc_Meditron": "0.5\t2.0\t0\t0\n"
                                                                       "2.0\t3.7\t1\t0\n"},
                     split="101_1b1_Al_sc_Meditron\ttrain\r\n")
    with_audio = icbhi.read(root)
    assert [c.end for c in with_audio.cycles] == [2.0, 3.0]   # the wav lasts 3 s
    assert [c.end for c in icbhi.read(root, annotations_only=True).cycles] == [2.0, 3.7]


def test_cycle_starting_past_the_end_is_an_error_or_listed(tmp_path):
    root = make_root(tmp_path, annotations={"101_1b1_Al_sc_Meditron": "0.5\t2.0\t0\t0\n"
                                                                       "3.2\t3.9\t1\t0\n"},
                     split="101_1b1_Al_sc_Meditron\ttrain\r\n")
    ann = root / DB / "101_1b1_Al_sc_Meditron.txt"
    with pytest.raises(records.DataError) as e:
        icbhi.read(root)
    assert (e.value.path, e.value.line) == (str(ann), 2)
    assert "past the end of the audio" in str(e.value)
    result = icbhi.read(root, skip_bad=True)
    assert [c.start for c in result.cycles] == [0.5]
    assert [(s.path, s.line) for s in result.skipped] == [(str(ann), 2)]


@pytest.mark.parametrize("sr", [4000, 10000, 44100])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32"])
def test_sample_rates_and_bit_depths(tmp_path, sr, subtype):
    root = make_root(tmp_path, annotations={"104_1p1_Lr_sc_Litt3200": "0.1\t1.0\t0\t1\n"
                                                                      "1.0\t9.0\t1\t1\n"},
                     split="104_1p1_Lr_sc_Litt3200\ttest\r\n")
    n = write_wav(root / DB / "104_1p1_Lr_sc_Litt3200.wav", 1.2345, sr, subtype)
    info = wav_checks.wav_info(root / DB / "104_1p1_Lr_sc_Litt3200.wav")
    assert (info.samplerate, info.subtype, info.channels) == (sr, subtype, 1)
    result = icbhi.read(root)
    assert [c.label for c in result.cycles] == [2, 3]
    assert result.cycles[1].end == pytest.approx(n / sr, abs=1e-12)


def _bad_wav(kind: str, path: Path) -> None:
    if kind == "missing":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_wav":
        path.write_bytes(b"0.1\t1.0\t0\t0\n" * 10)
    elif kind == "flac":
        path.unlink()
        sf.write(str(path), np.zeros(400), 4000, format="FLAC")
    elif kind == "header_only":
        sf.write(str(path), np.zeros(0), 4000, subtype="PCM_16", format="WAV")


@pytest.mark.parametrize("kind,message", [
    ("missing", "file not found"), ("empty", "empty file"), ("truncated", "truncated WAV"),
    ("not_wav", "not a WAV file"), ("flac", "not a WAV file"),
    ("header_only", "without samples")])
def test_bad_audio_is_an_error_naming_the_file_or_listed(tmp_path, kind, message):
    root = make_root(tmp_path)
    wav = root / DB / "102_2b3_Tc_mc_AKGC417L.wav"
    _bad_wav(kind, wav)
    with pytest.raises(records.DataError) as e:
        icbhi.read(root)
    assert e.value.path == str(wav)
    assert message in str(e.value) and "expected a PCM WAV recording" in str(e.value)
    result = icbhi.read(root, skip_bad=True)
    assert "102_2b3_Tc_mc_AKGC417L" not in by_stem(result)
    assert len(by_stem(result)) == 3
    assert [s.path for s in result.skipped] == [str(wav)]
    assert "2 cycle(s)" in result.skipped[0].reason
    # The annotations alone never touch the audio.
    assert len(icbhi.read(root, annotations_only=True).cycles) == 7


@pytest.mark.parametrize("line", [
    "0.5\t0.2\t0\t0",       # end before start
    "a\t1.0\t0\t0",          # not a number
    "0.1\t1.0\t2\t0",        # flag not 0/1
    "0.1\t1.0\t0",           # too few fields
    "0.1\t1.0\t0\t0\t1",     # too many fields
    "nan\t1.0\t0\t0",        # not finite
])
def test_malformed_annotation_line_names_file_and_line(tmp_path, line):
    text = f"0.1\t1.0\t0\t0\n{line}\n2.0\t2.9\t0\t1\n"
    root = make_root(tmp_path, annotations={"101_1b1_Al_sc_Meditron": text},
                     split="101_1b1_Al_sc_Meditron\ttrain\r\n", wavs=True)
    ann = root / DB / "101_1b1_Al_sc_Meditron.txt"
    with pytest.raises(records.DataError) as e:
        icbhi.read(root)
    assert (e.value.path, e.value.line) == (str(ann), 2)
    assert f"{ann}:2:" in str(e.value) and "start<TAB>end<TAB>crackles<TAB>wheezes" in str(e.value)
    result = icbhi.read(root, skip_bad=True)
    assert [(c.start, c.index) for c in result.cycles] == [(0.1, 0), (2.0, 2)]
    assert [(s.path, s.line) for s in result.skipped] == [(str(ann), 2)]


def test_empty_annotation_file_is_bad(tmp_path):
    root = make_root(tmp_path, annotations={"101_1b1_Al_sc_Meditron": "\n"},
                     split="101_1b1_Al_sc_Meditron\ttrain\r\n")
    with pytest.raises(records.DataError, match="without cycles"):
        icbhi.read(root)
    assert icbhi.read(root, skip_bad=True).cycles == []


def test_split_file_naming_a_missing_recording(tmp_path):
    split = ("101_1b1_Al_sc_Meditron\ttest\r\n102_2b3_Tc_mc_AKGC417L\ttrain\r\n"
             "103_1b1_Pl_sc_Meditron\ttrain\r\n999_1b1_Al_sc_Meditron\ttrain\r\n"
             "104_1p1_Lr_sc_Litt3200\ttest\r\n")
    root = make_root(tmp_path, split=split)
    with pytest.raises(records.DataError) as e:
        icbhi.read(root)
    assert (e.value.path, e.value.line) == (str(root / icbhi.SPLIT_FILE), 4)
    assert "999_1b1_Al_sc_Meditron" in str(e.value)
    result = icbhi.read(root, skip_bad=True)
    assert len(by_stem(result)) == 4
    assert [(s.path, s.line) for s in result.skipped] == [(str(root / icbhi.SPLIT_FILE), 4)]


def test_recording_missing_from_split_file(tmp_path):
    split = "101_1b1_Al_sc_Meditron\ttest\r\n102_2b3_Tc_mc_AKGC417L\ttrain\r\n" \
            "104_1p1_Lr_sc_Litt3200\ttest\r\n"
    root = make_root(tmp_path, split=split)
    ann = root / DB / "103_1b1_Pl_sc_LittC2SE.txt"
    with pytest.raises(records.DataError, match="not in the split file") as e:
        icbhi.read(root)
    assert e.value.path == str(ann)
    result = icbhi.read(root, skip_bad=True)
    assert "103_1b1_Pl_sc_LittC2SE" not in by_stem(result)
    assert [s.path for s in result.skipped] == [str(ann)]


@pytest.mark.parametrize("split,line", [
    ("101_1b1_Al_sc_Meditron\tvalidation\r\n", 1),
    ("101_1b1_Al_sc_Meditron\ttest\r\n101_1b1_Al_sc_Meditron\ttrain\r\n", 2),
])
def test_malformed_or_contradictory_split_lines(tmp_path, split, line):
    root = make_root(tmp_path, annotations={"101_1b1_Al_sc_Meditron": "0.1\t1.0\t0\t0\n"},
                     split=split)
    with pytest.raises(records.DataError) as e:
        icbhi.read(root, annotations_only=True)
    assert (e.value.path, e.value.line) == (str(root / icbhi.SPLIT_FILE), line)


@pytest.mark.parametrize("bad,what", [
    ("105\tabc\tF\tNA\t1\t1\r\n", "age"),
    ("105\t3\tX\tNA\t1\t1\r\n", "sex"),
    ("just-one-field\r\n", "malformed demographics line"),
    ("101\t4\tF\tNA\t19\t99\r\n", "second row for patient 101"),
])
def test_malformed_demographics_line(tmp_path, bad, what):
    root = make_root(tmp_path, demographics=("tab", TAB_DEMO + bad))
    demo = root / icbhi.DEMOGRAPHICS_FILES[0]
    with pytest.raises(records.DataError, match=what) as e:
        icbhi.read(root, annotations_only=True)
    assert (e.value.path, e.value.line) == (str(demo), 5)
    result = icbhi.read(root, annotations_only=True, skip_bad=True)
    assert len(result.cycles) == 7 and [s.line for s in result.skipped] == [5]


def test_patient_without_demographics_or_diagnosis(tmp_path):
    root = make_root(tmp_path, demographics=("tab", TAB_DEMO.replace("104\t18\tF\tNA\t60\t170\r\n",
                                                                     "")))
    with pytest.raises(records.DataError, match="no row for patient 104"):
        icbhi.read(root, annotations_only=True)
    root = make_root(tmp_path / "d", diagnosis="101\tURTI\n102\tCOPD\n103\tHealthy\n")
    with pytest.raises(records.DataError, match="no row for patient 104") as e:
        icbhi.read(root, annotations_only=True)
    assert e.value.path == str(root / icbhi.DIAGNOSIS_FILE)


def test_unknown_diagnosis_names_line(tmp_path):
    root = make_root(tmp_path, diagnosis=DIAGNOSIS.replace("COPD", "Flu"))
    with pytest.raises(records.DataError, match="'Flu'") as e:
        icbhi.read(root, annotations_only=True)
    assert (e.value.path, e.value.line) == (str(root / icbhi.DIAGNOSIS_FILE), 2)


@pytest.mark.parametrize("stem,what", [
    ("101_1b1_Xx_sc_Meditron", "location"),
    ("101_1b1_Al_zz_Meditron", "mode"),
    ("101_1b1_Al_sc_Phone", "device"),
    ("101_1b1_Al_sc", "PID_REC_LOC_MODE_DEVICE"),
])
def test_bad_stem_names_the_file(tmp_path, stem, what):
    root = make_root(tmp_path, annotations={stem: "0.1\t1.0\t0\t0\n"},
                     split=f"{stem}\ttrain\r\n")
    with pytest.raises(records.DataError, match=what) as e:
        icbhi.read(root, annotations_only=True)
    assert e.value.path == str(root / DB / f"{stem}.txt")


def test_missing_metadata_file_or_root(tmp_path):
    root = make_root(tmp_path, demographics=None)
    with pytest.raises(records.DataError, match="demographic_info.txt"):
        icbhi.read(root, annotations_only=True)
    with pytest.raises(records.DataError, match="dataset root not found"):
        icbhi.read(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(records.DataError, match="no annotation files"):
        icbhi.read(tmp_path / "empty")


# ---------------------------------------------------------------- the real files

REAL_WAV_STEMS = ("101_1b1_Al_sc_Meditron", "101_1b1_Pr_sc_Meditron", "102_1b1_Ar_sc_Meditron",
                  "103_2b2_Ar_mc_LittC2SE", "104_1b1_Al_sc_Litt3200", "104_1b1_Ar_sc_Litt3200",
                  "104_1b1_Ll_sc_Litt3200", "104_1b1_Lr_sc_Litt3200", "104_1b1_Pl_sc_Litt3200",
                  "104_1b1_Pr_sc_Litt3200")


def test_real_annotations_reproduce_spec_counts(icbhi_real):
    result = icbhi.read(icbhi_real, annotations_only=True)
    assert result.skipped == []
    assert len(result.cycles) == 6898
    expected = {"train": (4142, [2063, 1215, 501, 363], 539),
                "test": (2756, [1579, 649, 385, 143], 381)}
    for split, (n, classes, recordings) in expected.items():
        cycles = result.split(split)
        assert len(cycles) == n
        assert np.bincount([c.label for c in cycles], minlength=4).tolist() == classes
        assert len({c.stem for c in cycles}) == recordings
    assert len({c.patient for c in result.cycles}) == 126
    durations = np.array([c.duration for c in result.cycles])
    assert durations.min() >= 0.2 - 1e-9 and durations.max() <= 16.2 + 1e-9
    # Patient 223 is all NA; the Meditron split entry of 226_1b1_Pl is matched.
    assert {(c.sex, c.age_group) for c in result.cycles if c.patient == "223"} == {(None, None)}
    assert {c.split for c in result.cycles if c.stem == "226_1b1_Pl_sc_LittC2SE"} == {"train"}


def test_recordings_come_in_the_reference_order(icbhi_real, tmp_path):
    """The reader lists recordings as the reference code's metadata table does (the order its
    evaluation batches, and so their min-max, follow; docs/fidelity.md): every real
    recording once, the official split's among them; recordings it does not list last, by
    stem; cycles in annotation order."""
    ranks = icbhi.reference_ranks()
    assert len(ranks) == 920 and sorted(ranks.values()) == list(range(920))
    split_keys = {line.split()[0].rsplit("_", 1)[0] for line in
                  (icbhi_real / icbhi.SPLIT_FILE).read_text().splitlines() if line.strip()}
    assert {icbhi.split_key(s) for s in ranks} == split_keys
    listed = sorted(ranks, key=ranks.get)
    stems = ["999_1b1_Al_sc_Meditron", listed[7], "998_1b1_Al_sc_Meditron", listed[3]]
    assert icbhi.in_reference_order(stems) == [listed[3], listed[7], "998_1b1_Al_sc_Meditron",
                                               "999_1b1_Al_sc_Meditron"]
    result = icbhi.read(icbhi_real, annotations_only=True)
    order = list(dict.fromkeys(c.stem for c in result.cycles))
    assert order == listed and order != sorted(order)
    first = [c for c in result.cycles if c.stem == order[0]]
    assert [c.index for c in first] == list(range(len(first)))


def _real_subset(icbhi_real: Path, tmp_path: Path, full_split: bool) -> Path:
    """A root with the 10 real wav/txt pairs (symlinked) and the real metadata files."""
    root = tmp_path / "real10"
    (root / DB).mkdir(parents=True)
    for stem in REAL_WAV_STEMS:
        for ext in (".wav", ".txt"):
            os.symlink(icbhi_real / DB / f"{stem}{ext}", root / DB / f"{stem}{ext}")
    for name in (icbhi.DEMOGRAPHICS_FILES[0], icbhi.DIAGNOSIS_FILE):
        shutil.copyfile(icbhi_real / name, root / name)
    split = (icbhi_real / icbhi.SPLIT_FILE).read_bytes()
    if not full_split:
        keep = {icbhi.split_key(s) for s in REAL_WAV_STEMS}
        split = b"".join(line for line in split.splitlines(keepends=True)
                         if icbhi.split_key(line.split(b"\t")[0].decode()) in keep)
    (root / icbhi.SPLIT_FILE).write_bytes(split)
    return root


def test_real_recordings_are_read(icbhi_real, tmp_path):
    root = _real_subset(icbhi_real, tmp_path, full_split=False)
    result = icbhi.read(root)
    assert result.skipped == []
    assert sorted(by_stem(result)) == sorted(REAL_WAV_STEMS)
    annotations = icbhi.read(root, annotations_only=True)
    assert [(c.stem, c.start, c.end) for c in result.cycles] == [
        (c.stem, c.start, c.end) for c in annotations.cycles]   # no real cycle runs past
    rates = {c.device: wav_checks.wav_info(c.wav_path).samplerate for c in result.cycles}
    assert rates["Litt3200"] == 4000 and rates["Meditron"] == 44100
    subtypes = {wav_checks.wav_info(root / DB / f"{s}.wav").subtype for s in REAL_WAV_STEMS}
    assert subtypes == {"PCM_16", "PCM_24", "PCM_32"}


def test_real_split_file_names_recordings_this_root_lacks(icbhi_real, tmp_path):
    root = _real_subset(icbhi_real, tmp_path, full_split=True)
    with pytest.raises(records.DataError) as e:
        icbhi.read(root, annotations_only=True)
    assert e.value.path == str(root / icbhi.SPLIT_FILE) and e.value.line is not None
    result = icbhi.read(root, skip_bad=True)
    assert sorted(by_stem(result)) == sorted(REAL_WAV_STEMS)
    assert len(result.skipped) == 910
    assert {s.path for s in result.skipped} == {str(root / icbhi.SPLIT_FILE)}


def test_real_root_without_most_wavs(icbhi_real):
    with pytest.raises(records.DataError, match="file not found") as e:
        icbhi.read(icbhi_real)
    assert e.value.path.endswith(".wav")
    result = icbhi.read(icbhi_real, skip_bad=True)
    assert sorted(by_stem(result)) == sorted(REAL_WAV_STEMS)
    assert len(result.skipped) == 910
    assert all(s.path.endswith(".wav") for s in result.skipped)
