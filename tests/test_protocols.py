"""Protocols beyond the official split (docs/method.md §13): leaving one ICBHI device out and
SPRSound's challenge tasks, as choices of splits by the Source; which cycles land where,
that no patient is on both sides, the config field that names each, and the challenge
metrics against an independent implementation of the organisers' definitions."""

import json

import numpy as np
import pytest
import soundfile as sf

from resp_jax import configuration, metrics
from resp_jax.data import icbhi, records, run_data, sources, sprsound, synthetic
from train_helpers import tiny_config

DEVICES = icbhi.VOCABS[2][1]


def _cycle(stem, split, label=0, index=0):
    info = icbhi.parse_stem(stem)
    return records.Cycle(dataset="icbhi", split=split, stem=stem, wav_path="", index=index,
                         patient=info["patient"], start=0.0, end=1.0, label=label,
                         label_name=icbhi.CLASSES[label], device=info["device"])


# Official train and test recordings of every device; patient 107 is recorded with two
# devices (as ICBHI's 112, 158, 218 and 226 are), patient 108 is in both official splits.
SPLITS = {
    "train": [_cycle("101_1b1_Al_sc_Meditron", "train"), _cycle("101_1b1_Al_sc_Meditron", "train", 1, 1),
              _cycle("102_1b1_Tc_mc_AKGC417L", "train", 2),
              _cycle("103_1b1_Pl_sc_LittC2SE", "train", 3),
              _cycle("107_1b1_Pr_sc_LittC2SE", "train"),
              _cycle("108_1b1_Ar_sc_Litt3200", "train", 1)],
    "test": [_cycle("104_1b1_Al_sc_Meditron", "test", 1), _cycle("105_1b1_Ll_mc_AKGC417L", "test"),
             _cycle("106_1b1_Lr_sc_Litt3200", "test", 2), _cycle("107_2b1_Al_sc_Meditron", "test"),
             _cycle("108_2b1_Tc_sc_Litt3200", "test", 3)],
}


def _stems(cycles):
    return [(c.stem, c.index) for c in cycles]


@pytest.mark.parametrize("device", DEVICES)
def test_leave_device_out_tests_every_recording_of_the_device(device):
    source = sources.get("icbhi")
    chosen = source.protocol_splits(SPLITS, sources.LEAVE_DEVICE_OUT, held_out=device)
    test_name = f"device={device}"
    assert list(chosen) == ["train", test_name]
    everything = SPLITS["train"] + SPLITS["test"]
    test, train = chosen[test_name], chosen["train"]
    # Every cycle of the device, from both official splits (LittC2SE has no official test
    # recording in ICBHI), in split order; none of another device.
    assert _stems(test) == _stems([c for c in everything if c.device == device])
    held_patients = {c.patient for c in test}
    # Training: every other device's cycles but those of patients also recorded with it.
    assert _stems(train) == _stems([c for c in everything if c.device != device
                                    and c.patient not in held_patients])
    assert not held_patients & {c.patient for c in train}
    left_out = [c for c in everything if c.device != device and c.patient in held_patients]
    assert len(train) + len(test) + len(left_out) == len(everything)


def test_a_patient_of_two_devices_never_trains_against_their_own_test():
    chosen = sources.get("icbhi").protocol_splits(SPLITS, "leave_device_out",
                                                  held_out="Meditron")
    # Patient 107's LittC2SE recording would train while their Meditron one is tested.
    assert "107_1b1_Pr_sc_LittC2SE" not in {c.stem for c in chosen["train"]}
    assert "107_2b1_Al_sc_Meditron" in {c.stem for c in chosen["device=Meditron"]}
    assert len(chosen["train"]) == 6 and len(chosen["device=Meditron"]) == 4


def _config(tiny, protocol="official", held_out=""):
    config = tiny_config("ce")
    config.data.root, config.data.tfds_dir = str(tiny["root"]), str(tiny["tfds"])
    config.data.protocol, config.data.held_out = protocol, held_out
    return configuration.resolve(config)


@pytest.mark.slow   # prepares the tiny ICBHI set (then shared with the other slow tests)
def test_leave_device_out_on_prepared_data_is_patient_disjoint(tiny_icbhi):
    """The same choice on prepared splits, as a run gets them (tiny synthetic ICBHI): over
    the four folds every cycle is tested exactly once."""
    official = run_data.prepared_splits(_config(tiny_icbhi)).splits
    source, tested = sources.get("icbhi"), []
    for device in DEVICES:
        chosen = source.protocol_splits(official, "leave_device_out", held_out=device)
        train, test = chosen["train"], chosen[f"device={device}"]
        assert len(test) and all(s.endswith("_" + device) for s in test.stem)
        assert set(test.codes["device"].tolist()) == {DEVICES.index(device)}
        assert not any(s.endswith("_" + device) for s in train.stem)
        assert not set(train.patient) & set(test.patient)
        tested += list(zip(test.stem, test.index.tolist()))
    everything = [k for s in official.values() for k in zip(s.stem, s.index.tolist())]
    assert sorted(tested) == sorted(everything)
    # A run's config names the protocol and the device; run_data makes the same choice.
    config = _config(tiny_icbhi, "leave_device_out", "Meditron")
    assert (config.data.test_split, config.data.classes) == ("device=Meditron", icbhi.CLASSES)
    prepared = run_data.prepared_splits(config)
    assert list(prepared.splits) == ["train", "device=Meditron"]
    expected = source.protocol_splits(official, "leave_device_out", held_out="Meditron")
    for name, split in expected.items():
        assert prepared[name].stem == split.stem
        np.testing.assert_array_equal(prepared[name].label, split.label)


@pytest.mark.parametrize("protocol, held_out, message", [
    ("leave_device_out", "", r"config.data.held_out \(the device that protocol "
                             r"'leave_device_out' holds out\) must be one of \('AKGC417L'"),
    ("leave_device_out", "Littmann", "must be one of"),
    ("official", "Meditron", "protocol 'official' holds nothing out"),
    ("task2_1", "", r"config.data.protocol: icbhi has no protocol 'task2_1'; expected one of "
                    r"\('official', 'leave_device_out'\)"),
])
def test_bad_protocol_fields_fail_before_running(protocol, held_out, message):
    config = tiny_config("ce")
    config.data.protocol, config.data.held_out = protocol, held_out
    with pytest.raises(ValueError, match=message):
        configuration.resolve(config)


def test_a_leave_out_run_reports_only_its_held_out_split():
    config = tiny_config("ce")
    config.data.protocol, config.data.held_out = "leave_device_out", "Litt3200"
    config.data.test_split = "test"
    with pytest.raises(ValueError, match=r"data.test_split must be one of \('device=Litt3200',\)"):
        configuration.resolve(config)


# ------------------------------------------------------------------------------------------
# SPRSound's challenge tasks

# The organisers' label dictionaries ([sprs] scripts/train.py), written out independently.
ORGANISERS = {
    "task1_1": {"Normal": 0, "Rhonchi": 1, "Wheeze": 1, "Stridor": 1, "Coarse Crackle": 1,
                "Fine Crackle": 1, "Wheeze+Crackle": 1},
    "task1_2": {"Normal": 0, "Rhonchi": 1, "Wheeze": 2, "Stridor": 3, "Coarse Crackle": 4,
                "Fine Crackle": 5, "Wheeze+Crackle": 6},
    "task2_1": {"Normal": 0, "Poor Quality": 1, "CAS": 2, "DAS": 2, "CAS & DAS": 2},
    "task2_2": {"Normal": 0, "Poor Quality": 1, "CAS": 2, "DAS": 3, "CAS & DAS": 4},
}


def organisers_scores(true: list, pred: list) -> dict:
    """SE, SP, AS, HS and Score as the challenge defines them, from label numbers (0 =
    Normal): SP the share of normal units predicted normal, SE the share of the others
    (Poor Quality included) predicted as their exact class."""
    true, pred = np.asarray(true), np.asarray(pred)
    normal = true == 0
    sp = 100 * np.mean(pred[normal] == 0)
    se = 100 * np.mean(pred[~normal] == true[~normal])
    as_ = (se + sp) / 2
    hs = 2 * se * sp / (se + sp)
    return {"sp": sp, "se": se, "score": as_, "hs": hs, "sprsound_score": (as_ + hs) / 2}


@pytest.fixture(scope="module")
def spr_root(tmp_path_factory):
    return synthetic.write_sprsound(tmp_path_factory.mktemp("spr") / "root", recordings=12,
                                    seed=3)


def test_the_prepared_copy_holds_every_recording_once_with_its_record_annotation(spr_root):
    result = sprsound.SOURCE.read_prepared(spr_root)
    assert result.splits == sprsound.SPLITS + sprsound.RECORD_SPLITS
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(spr_root.rglob("*.json"))}
    whole = [c for c in result.cycles if c.split.endswith("_records")]
    assert sorted(c.stem for c in whole) == sorted(docs)   # the poor-quality one included
    assert "Poor Quality" in {c.label_name for c in whole}
    events = [c for c in result.cycles if not c.split.endswith("_records")]
    assert events == sprsound.SOURCE.read(spr_root).cycles   # the events are unchanged
    for c in whole:
        assert c.label_name == docs[c.stem]["record_annotation"]
        assert sprsound.RECORD_CLASSES[c.label] == c.label_name
        assert (c.index, c.start) == (0, 0.0)
        assert c.end == pytest.approx(sf.info(c.wav_path).duration)
    # Each recording's unit is in its recording's split.
    folder = {p.stem: ("train" if p.parent.name == "train_json" else p.parent.name[:-5])
              for p in spr_root.rglob("*.json")}
    assert all(c.split == folder[c.stem] + "_records" for c in whole)


@pytest.mark.parametrize("task", sorted(ORGANISERS))
def test_challenge_tasks_relabel_as_the_organisers_and_score_as_they_define(spr_root, task):
    source = sprsound.SOURCE
    result = source.read_prepared(spr_root)
    splits = {s: result.split(s) for s in result.splits}
    chosen = source.protocol_splits(splits, task)
    classes = source.protocol(task).classes
    assert list(chosen) == list(sprsound.SPLITS)
    record_level = task.startswith("task2")
    rng = np.random.default_rng(0)
    for split, cycles in chosen.items():
        raw = splits[split + ("_records" if record_level else "")]
        assert [(c.stem, c.index) for c in cycles] == [(c.stem, c.index) for c in raw]
        expected = [ORGANISERS[task][c.label_name] for c in raw]
        assert [c.label for c in cycles] == expected
        if not cycles:
            continue
        # The metrics of a run (metrics.py, class 0 the normal class) are the organisers'.
        true = np.array(expected + list(range(len(classes))))  # every class present
        pred = rng.integers(0, len(classes), len(true))
        pred[:3] = true[:3]
        ours = metrics.summarize(true, pred, dataset="sprsound", num_classes=len(classes))
        theirs = organisers_scores(true, pred)
        assert {k: ours[k] for k in theirs} == pytest.approx(theirs)


def test_task_protocols_set_the_classes_of_the_run():
    for task, table in ORGANISERS.items():
        config = tiny_config("ce")
        config.data.name, config.data.protocol = "sprsound", task
        resolved = configuration.resolve(config)
        names = sorted(set(table.values()))
        assert len(resolved.data.classes) == len(names)
        assert resolved.data.classes[0] == "Normal" == resolved.data.normal_class
        assert resolved.data.test_split == "inter_test"


@pytest.mark.slow   # prepares a SPRSound set, trains one epoch
def test_a_record_task_run_classifies_whole_recordings(spr_root, tmp_path):
    from resp_jax import evaluation, train

    config = tiny_config("ce", epochs=1, duration=2.0)
    config.data.name, config.data.root = "sprsound", str(spr_root)
    config.data.tfds_dir, config.data.protocol = str(tmp_path / "tfds"), "task2_2"
    data = run_data.load(configuration.resolve(config))
    recordings = {split: sorted(p.stem for p in (spr_root / "test_json" / f"{split}_json")
                                .glob("*.json")) for split in ("inter_test", "intra_test")}
    recordings["train"] = sorted(p.stem for p in (spr_root / "train_json").glob("*.json"))
    for split, stems in recordings.items():
        f = data.features[split]
        assert sorted(f.stem) == stems   # one unit per recording
        assert set(f.index.tolist()) == {0} and set(f.start.tolist()) == {0.0}
        assert (f.end > 7.9).all()       # whole 8-15 s recordings, not events
    results = train.train_and_evaluate(config, tmp_path / "run")
    p = evaluation.read(tmp_path / "run" / "predictions.csv", "sprsound")
    assert p.classes == sprsound.RECORD_CLASSES and sorted(p.stem) == recordings["inter_test"]
    assert "sprsound_score" in results["test"] and results["test_split"] == "inter_test"
    assert {k: p.scores()[k] for k in ("sp", "se", "score")} == {
        k: results["test"][k] for k in ("sp", "se", "score")}
