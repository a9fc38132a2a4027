"""HF_Lung_V1 (`resp_jax.data.hf_lung`): the label syntax, the phase labelling rule
(docs/method.md §1.4) on a hand-made root, bad input, and the synthetic root in its layout."""

import collections
import json
import re

import numpy as np
import pytest
import soundfile as sf

from resp_jax.data import hf_lung, inspect, readers, records, synthetic, wav_checks

# (type, start, end) lines of one hand-made label file, shuffled as real files may be.
LABELS = [
    ("E", "00:00:01.500", "00:00:03.000"),
    ("I", "00:00:00.000", "00:00:01.500"),
    ("I", "00:00:03.000", "00:00:04.000"),
    ("E", "00:00:04.000", "00:00:06.000"),
    ("I", "00:00:06.000", "00:00:07.000"),
    ("E", "00:00:07.000", "00:00:09.000"),
    ("I", "00:00:09.000", "00:00:10.000"),
    ("E", "00:00:09.000", "00:00:10.000"),     # the span of the I before it: left out
    ("I", "00:00:11.000", "00:00:11.000"),     # end == start: left out
    ("Wheeze", "00:00:01.600", "00:00:02.900"),    # inside the first E: CAS
    ("D", "00:00:02.950", "00:00:03.900"),         # 0.05 s of that E, most of the next I
    ("Rhonchi", "00:00:04.500", "00:00:06.800"),   # most of an E and of the I after it
    ("D", "00:00:06.200", "00:00:06.900"),         # inside that I: CAS & DAS
    ("Stridor", "00:00:08.900", "00:00:09.100"),   # 0.1 of 0.2 s: half of the event
]
EXPECTED = [("I", "Normal"), ("E", "CAS"), ("I", "DAS"), ("E", "CAS"), ("I", "CAS & DAS"),
            ("E", "CAS"), ("I", "CAS")]
STARTS = [0.0, 1.5, 3.0, 4.0, 6.0, 7.0, 9.0]


def _label_file(path, lines):
    path.write_text("".join(f"{t} {a} {b}\n" for t, a, b in lines))
    return path


def _wav(path, seconds=15.0, sr=4000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.2 * np.sin(2 * np.pi * 200 * t), sr, subtype="PCM_16")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "HF_Lung_V1"
    for split, stem in (("train", "steth_20190801_10_55_11"),
                        ("test", "trunc_2019-08-08-09-36-47-L1_3")):
        (root / split).mkdir(parents=True)
        _label_file(root / split / f"{stem}_label.txt", LABELS)
        _wav(root / split / f"{stem}.wav")
    _label_file(root / "train" / "trunc_2019-07-17-10-07-09-L1_1_label.txt", [])   # empty
    _wav(root / "train" / "trunc_2019-07-17-10-07-09-L1_1.wav")
    return root


def test_phases_are_units_labelled_from_the_events_they_overlap(root):
    dropped = []
    result = hf_lung.read(root, dropped=dropped)
    assert result.skipped == [] and result.splits == ("train", "test")
    train = result.split("train")
    assert [c.label_name for c in train] == [name for _, name in EXPECTED]
    assert [c.start for c in train] == STARTS and [c.index for c in train] == list(range(7))
    assert train[0].end == 1.5 and train[0].wav_path.endswith("steth_20190801_10_55_11.wav")
    assert {(c.device, c.patient) for c in train} == {("steth", "steth_20190801_10_55_11")}
    test = result.split("test")
    assert {(c.device, c.patient) for c in test} == {("trunc", "trunc_2019-08-08-09-36-47")}
    assert sorted(d.line for d in dropped) == [8, 8, 9, 9]   # in both files
    assert "repeats the span of line 7" in dropped[0].reason + dropped[1].reason
    assert result.classes == ("Normal", "CAS", "DAS", "CAS & DAS")


def test_the_label_files_of_predict_and_the_archive_folder(root, tmp_path):
    label = root / "train" / "steth_20190801_10_55_11_label.txt"
    source, units, dropped = readers.read_annotation(label)
    assert source.name == "hf_lung" and len(dropped) == 2
    assert [hf_lung.CLASSES[u[2]] for u in units] == [name for _, name in EXPECTED]
    archive = tmp_path / "unpacked"
    archive.mkdir()
    root.rename(archive / hf_lung.ARCHIVE_DIR)
    assert len(hf_lung.read(archive, annotations_only=True).cycles) == 14


@pytest.mark.parametrize("line, reason", [
    ("I 00:00:01.000", "2 fields"),
    ("X 00:00:01.000 00:00:02.000", "unknown type 'X'"),
    ("I 00:00:01,000 00:00:02.000", "'00:00:01,000' is not a time HH:MM:SS.fff"),
])
def test_bad_lines_name_the_file_and_line_unless_skipped(root, line, reason):
    label = root / "test" / "trunc_2019-08-08-09-36-47-L1_3_label.txt"
    label.write_text(label.read_text() + line + "\n")
    message = f"{label}:{len(LABELS) + 1}: malformed label line {line!r} ({reason}); expected"
    with pytest.raises(records.DataError, match=re.escape(message)):
        hf_lung.read(root)
    result = hf_lung.read(root, skip_bad=True)
    assert [(s.path, s.line) for s in result.skipped] == [(str(label), len(LABELS) + 1)]
    assert len(result.split("test")) == 7


def test_a_missing_recording_or_layout_is_an_error(root, tmp_path):
    (root / "test" / "trunc_2019-08-08-09-36-47-L1_3.wav").unlink()
    with pytest.raises(records.DataError, match="trunc_2019-08-08-09-36-47-L1_3.wav: file not"):
        hf_lung.read(root)
    assert len(hf_lung.read(root, skip_bad=True).split("test")) == 0
    (tmp_path / "flat").mkdir()
    with pytest.raises(records.DataError, match="no HF_Lung_V1 layout; expected"):
        hf_lung.read(tmp_path / "flat")


def test_synthetic_root_in_the_real_layout_and_its_inspect_counts(tmp_path):
    root = synthetic.write("hf_lung", tmp_path / "hf", recordings=12, seed=3)
    dropped = []
    result = hf_lung.read(root, dropped=dropped)
    assert result.skipped == [] and len(dropped) == 1          # the repeated span
    stems = {s: {c.stem for c in result.split(s)} for s in result.splits}
    sessions = {s: {c.patient for c in result.split(s)} for s in result.splits}
    assert all(stems.values()) and not sessions["train"] & sessions["test"]
    labels = sorted((root / "train").glob("*_label.txt")) + sorted(
        (root / "test").glob("*_label.txt"))
    assert len(labels) >= 12 and any(p.read_text() == "" for p in labels)
    for label in labels:
        info = wav_checks.wav_info(label.with_name(label.name[:-len("_label.txt")] + ".wav"))
        assert (info.samplerate, info.duration, info.subtype) == (4000, 15.0, "PCM_16")
    kinds = collections.Counter(line.split()[0] for p in labels
                                for line in p.read_text().splitlines())
    assert set(kinds) <= {"I", "E", "D", "Wheeze", "Stridor", "Rhonchi"} and kinds["E"] < kinds["I"]
    assert {c.label for c in result.split("train")} == {0, 1, 2, 3}
    summary = inspect.summarize("hf_lung", result)
    for split, s in summary["splits"].items():
        assert s["cycles"] == len(result.split(split)) == sum(s["classes"].values())
        assert s["recordings"] == len(stems[split]) and s["patients"] == len(sessions[split])
    assert summary["metadata"]["device"] == dict(collections.Counter(
        c.device for c in result.cycles))
    json.dumps(summary)


@pytest.mark.slow  # a TFDS preparation
def test_prepared_copy_holds_the_phases_with_their_codes(root, tmp_path):
    from resp_jax.data import prepare

    p = prepare.load("hf_lung", root, data_dir=tmp_path / "tfds")
    units = hf_lung.read(root).cycles
    assert list(p.splits) == ["train", "test"] and p.schema == hf_lung.SOURCE.schema()
    for split in p.splits:
        want = [c for c in units if c.split == split]
        s = p[split]
        assert s.stem == [c.stem for c in want] and s.patient == [c.patient for c in want]
        assert list(s.label) == [c.label for c in want]
        assert list(s.codes["device"]) == [hf_lung.DEVICES.index(c.device) for c in want]
        assert set(s.codes["sex"]) == {-1}                   # HF_Lung records no sex
        assert [len(a) for a in s.audio] == [round((c.end - c.start) * 16000) for c in want]
