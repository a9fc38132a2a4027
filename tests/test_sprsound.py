"""SPRSound reader: both 2022 layouts, splits by JSON folder, stem parsing, event handling
(ms strings, unsorted, end <= start) and every bad-input case, on hand-made roots."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from resp_jax.data import records, sprsound, synthetic

# stem -> (split, events); the patient ids have different lengths.
RECORDINGS = {
    "65109516_0.2_0_p1_3659": ("train", [
        {"start": "1056", "end": "1748", "type": "Wheeze"},
        {"start": "239", "end": "963", "type": "Fine Crackle"},
        {"start": "2000", "end": "2000", "type": "Normal"},      # end == start: dropped
        {"start": "2500", "end": "3100", "type": "Wheeze+Crackle"}]),
    "4089040_5.0_1_p4_12": ("train", [
        {"start": "100", "end": "900", "type": "Rhonchi"},
        {"start": "900", "end": "2900", "type": "Stridor"}]),
    "123456789_4.9_1_p2_7": ("inter_test", [
        {"start": "0", "end": "1000", "type": "Normal"},
        {"start": "1200", "end": "2400", "type": "Coarse Crackle"}]),
    "65109516_0.2_0_p3_3681": ("intra_test", [
        {"start": 300, "end": 1500, "type": "Normal"}]),   # numbers are accepted too
}


def write_wav(path: Path, seconds: float = 3.0, sr: int = 8000, subtype: str = "PCM_16"):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 300 * t), sr, subtype=subtype, format="WAV")


def make_root(tmp_path: Path, layout: str = "plain", recordings: dict = RECORDINGS,
              wavs: bool = True) -> Path:
    root = tmp_path / "spr"
    dirs = synthetic.sprsound_split_dirs(root, layout, create=True)
    for stem, (split, events) in recordings.items():
        w, j = dirs[split]
        doc = {"record_annotation": "CAS & DAS", "event_annotation": events}
        (j / f"{stem}.json").write_text(json.dumps(doc))
        if wavs:
            write_wav(w / f"{stem}.wav")
    return root


def paths(root: Path, stem: str, split: str = "train", layout: str = "plain"):
    wav_dir, json_dir = synthetic.sprsound_split_dirs(root, layout)[split]
    return wav_dir / f"{stem}.wav", json_dir / f"{stem}.json"


@pytest.mark.parametrize("layout", ["plain", "biocas"])
def test_reads_both_2022_layouts(tmp_path, layout):
    root = make_root(tmp_path, layout)
    dropped = []
    result = sprsound.read(root, dropped=dropped)
    assert result.skipped == []
    got = [(c.split, c.stem, c.index, c.start, c.end, c.label, c.label_name)
           for c in result.cycles]
    assert got == [
        # train files in path order; events sorted by start; ms -> s
        ("train", "4089040_5.0_1_p4_12", 0, 0.1, 0.9, 1, "Rhonchi"),
        ("train", "4089040_5.0_1_p4_12", 1, 0.9, 2.9, 3, "Stridor"),
        ("train", "65109516_0.2_0_p1_3659", 0, 0.239, 0.963, 5, "Fine Crackle"),
        ("train", "65109516_0.2_0_p1_3659", 1, 1.056, 1.748, 2, "Wheeze"),
        ("train", "65109516_0.2_0_p1_3659", 2, 2.5, 3.0, 6, "Wheeze+Crackle"),  # clamped
        ("inter_test", "123456789_4.9_1_p2_7", 0, 0.0, 1.0, 0, "Normal"),
        ("inter_test", "123456789_4.9_1_p2_7", 1, 1.2, 2.4, 4, "Coarse Crackle"),
        ("intra_test", "65109516_0.2_0_p3_3681", 0, 0.3, 1.5, 0, "Normal"),
    ]
    # The event with end == start is left out, as docs/method.md §1.2 says, and reported, not silent.
    assert len(dropped) == 1 and "end <= start" in dropped[0].reason
    assert dropped[0].path == str(paths(root, "65109516_0.2_0_p1_3659", layout=layout)[1])
    by_stem = {c.stem: c for c in result.cycles}
    c = by_stem["65109516_0.2_0_p1_3659"]
    assert (c.patient, c.age, c.sex, c.age_group, c.location) == (
        "65109516", 0.2, "M", "baby", "p1")
    assert c.wav_path == str(paths(root, c.stem, layout=layout)[0])
    assert (c.device, c.mode, c.diagnosis) == (None, None, None)
    c = by_stem["4089040_5.0_1_p4_12"]
    assert (c.patient, c.age, c.sex, c.age_group, c.location) == ("4089040", 5.0, "F", "kid",
                                                                  "p4")
    c = by_stem["123456789_4.9_1_p2_7"]
    assert (c.patient, c.age_group) == ("123456789", "baby")


def test_root_may_be_the_biocas_folder_itself(tmp_path):
    root = make_root(tmp_path, "biocas")
    a = sprsound.read(root, annotations_only=True)
    b = sprsound.read(root / "BioCAS2022", annotations_only=True)
    assert [(c.stem, c.start) for c in a.cycles] == [(c.stem, c.start) for c in b.cycles]
    assert all(c.wav_path == "" for c in a.cycles)


def test_annotations_only_does_not_clamp_or_open_wavs(tmp_path):
    root = make_root(tmp_path, wavs=False)
    result = sprsound.read(root, annotations_only=True)
    assert max(c.end for c in result.cycles) == 3.1
    assert len(result.cycles) == 8


def test_age_group_boundary():
    assert sprsound.age_group(4.9) == "baby"
    assert sprsound.age_group(5.0) == "kid"


def test_event_starting_past_the_audio_end(tmp_path):
    recs = {"1_3.0_0_p1_1": ("train", [{"start": "100", "end": "900", "type": "Normal"},
                                        {"start": "3500", "end": "4000", "type": "Wheeze"}])}
    root = make_root(tmp_path, recordings=recs)
    with pytest.raises(records.DataError, match="past the end of the audio") as e:
        sprsound.read(root)
    assert e.value.path == str(paths(root, "1_3.0_0_p1_1")[1])
    result = sprsound.read(root, skip_bad=True)
    assert [c.label_name for c in result.cycles] == ["Normal"]
    assert len(result.skipped) == 1


@pytest.mark.parametrize("text,message,line", [
    ('{"record_annotation": "Normal", "event_annotation": [', "invalid JSON", 1),
    ('{"record_annotation": "Normal"}', "no 'event_annotation' list", None),
    ('{"record_annotation": "Normal",\n "event_annotation": {"start": "1"}}',
     "no 'event_annotation' list", None),
    ('[1, 2]', "no 'event_annotation' list", None),
])
def test_bad_json_file_names_the_file(tmp_path, text, message, line):
    root = make_root(tmp_path)
    _, js = paths(root, "4089040_5.0_1_p4_12")
    js.write_text(text)
    with pytest.raises(records.DataError, match=message) as e:
        sprsound.read(root)
    assert (e.value.path, e.value.line) == (str(js), line)
    result = sprsound.read(root, skip_bad=True)
    assert "4089040_5.0_1_p4_12" not in {c.stem for c in result.cycles}
    assert len(result.cycles) == 6
    assert [s.path for s in result.skipped] == [str(js)]


@pytest.mark.parametrize("event,message", [
    ({"start": "100", "end": "900"}, "lacks ['type']"),
    ({"end": "900", "type": "Normal"}, "lacks ['start']"),
    ({"start": "100", "end": "900", "type": "Crackle"}, "unknown event type 'Crackle'"),
    ({"start": "1e", "end": "900", "type": "Normal"}, "not a number of milliseconds"),
    ({"start": None, "end": "900", "type": "Normal"}, "not a number of milliseconds"),
    ({"start": "-5", "end": "900", "type": "Normal"}, "not a number of milliseconds"),
])
def test_bad_event_names_the_file_and_event(tmp_path, event, message):
    recs = {"1_3.0_0_p1_1": ("train", [{"start": "1000", "end": "1900", "type": "Normal"},
                                        event])}
    root = make_root(tmp_path, recordings=recs)
    with pytest.raises(records.DataError, match=re.escape(message)) as e:
        sprsound.read(root)
    assert e.value.path == str(paths(root, "1_3.0_0_p1_1")[1])
    assert "event 1" in str(e.value)
    result = sprsound.read(root, skip_bad=True)
    assert [c.start for c in result.cycles] == [1.0]
    assert len(result.skipped) == 1 and "event 1" in result.skipped[0].reason


@pytest.mark.parametrize("kind,message", [
    ("missing", "file not found"), ("empty", "empty file"), ("truncated", "truncated WAV"),
    ("not_wav", "not a WAV file")])
def test_bad_audio_names_the_file(tmp_path, kind, message):
    root = make_root(tmp_path)
    wav, _ = paths(root, "123456789_4.9_1_p2_7", "inter_test")
    if kind == "missing":
        wav.unlink()
    elif kind == "empty":
        wav.write_bytes(b"")
    elif kind == "truncated":
        wav.write_bytes(wav.read_bytes()[:-1000])
    else:
        wav.write_text('{"not": "audio"}')
    with pytest.raises(records.DataError, match=message) as e:
        sprsound.read(root)
    assert e.value.path == str(wav)
    result = sprsound.read(root, skip_bad=True)
    assert result.split("inter_test") == []
    assert [s.path for s in result.skipped] == [str(wav)]
    assert "2 event(s)" in result.skipped[0].reason


@pytest.mark.parametrize("stem,message", [
    ("65109516_0.2_0_p1", "PATIENT_AGE_GENDER_LOCATION_REC"),
    ("65109516_old_0_p1_1", "age 'old'"),
    ("65109516_0.2_2_p1_1", "gender '2'"),
    ("65109516_0.2_0_p9_1", "location 'p9'"),
])
def test_bad_stem_names_the_file(tmp_path, stem, message):
    root = make_root(tmp_path, recordings={stem: ("train", [
        {"start": "0", "end": "500", "type": "Normal"}])})
    with pytest.raises(records.DataError, match=message) as e:
        sprsound.read(root, annotations_only=True)
    assert e.value.path == str(paths(root, stem)[1])


def test_test_json_outside_inter_and_intra_folders(tmp_path):
    root = make_root(tmp_path)
    stray = root / "test_json" / "5_1.0_0_p1_1.json"
    stray.write_text('{"event_annotation": []}')
    with pytest.raises(records.DataError, match="inter_test_json or intra_test_json") as e:
        sprsound.read(root, annotations_only=True)
    assert e.value.path == str(stray)
    assert len(sprsound.read(root, annotations_only=True, skip_bad=True).skipped) == 1


def test_missing_layout_folders(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(records.DataError, match="no SPRSound 2022 layout") as e:
        sprsound.read(tmp_path / "nothing")
    assert e.value.path == str(tmp_path / "nothing")
    root = make_root(tmp_path)
    (root / "test_json" / "intra_test_json" / "65109516_0.2_0_p3_3681.json").unlink()
    (root / "test_json" / "intra_test_json").rmdir()
    with pytest.raises(records.DataError, match="intra_test_json"):
        sprsound.read(root)


def test_recording_without_events_gives_no_cycles(tmp_path):
    recs = {"1_3.0_0_p1_1": ("train", []),
            "2_3.0_0_p1_1": ("inter_test", [{"start": "0", "end": "500", "type": "Normal"}])}
    root = make_root(tmp_path, recordings=recs)
    result = sprsound.read(root)
    assert [c.stem for c in result.cycles] == ["2_3.0_0_p1_1"] and result.skipped == []
