"""resp_jax.evaluate: a finished run on another dataset through a class map (docs/method.md
§13.2): the map both ways against a computation by hand, a user's map, and the command on a
tiny run, whose files report and report --compare read like a run's."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resp_jax import comparison, evaluate, evaluation, report
from resp_jax.data import icbhi, sprsound, synthetic
from train_helpers import ROOT

ICBHI, SPR = icbhi.CLASSES, sprsound.CLASSES


def test_an_icbhi_model_on_sprsound_maps_the_annotations():
    cmap = evaluate.class_map(ICBHI, SPR)
    assert cmap.side == evaluate.ANNOTATIONS and cmap.classes == ICBHI
    assert "declared by sprsound" in cmap.origin
    # Normal, Rhonchi, Wheeze, Stridor (continuous: wheeze), Coarse and Fine Crackle
    # (crackle), Wheeze+Crackle (both).
    assert cmap.annotated(SPR).tolist() == [0, 2, 2, 2, 1, 1, 3]
    probs = np.random.default_rng(0).dirichlet(np.ones(4), 5).astype(np.float32)
    np.testing.assert_array_equal(cmap.probabilities(probs, ICBHI), probs)


def test_a_sprsound_model_on_icbhi_sums_its_probabilities_per_icbhi_class():
    cmap = evaluate.class_map(SPR, ICBHI)
    assert cmap.side == evaluate.PREDICTIONS and cmap.classes == ICBHI
    assert cmap.annotated(ICBHI).tolist() == [0, 1, 2, 3]
    probs = np.random.default_rng(1).dirichlet(np.ones(7), 6).astype(np.float32)
    by_hand = np.stack([probs[:, 0], probs[:, 4] + probs[:, 5],
                        probs[:, 1] + probs[:, 2] + probs[:, 3], probs[:, 6]], axis=1)
    np.testing.assert_allclose(cmap.probabilities(probs, SPR), by_hand, rtol=1e-6)


def test_hf_lung_and_icbhi_name_the_same_classes_differently():
    from resp_jax.data import hf_lung
    cmap = evaluate.class_map(ICBHI, hf_lung.CLASSES)   # an ICBHI model on HF_Lung
    assert cmap.side == evaluate.ANNOTATIONS and cmap.annotated(hf_lung.CLASSES).tolist() == [
        0, 2, 1, 3]
    back = evaluate.class_map(hf_lung.CLASSES, ICBHI)   # and back: a renaming
    probs = np.random.default_rng(2).dirichlet(np.ones(4), 3).astype(np.float32)
    np.testing.assert_allclose(back.probabilities(probs, hf_lung.CLASSES),
                               probs[:, [0, 2, 1, 3]], rtol=1e-6)


def test_same_class_names_are_the_identity_and_a_users_map_wins():
    shuffled = ("normal", "wheeze", "crackle", "both")
    cmap = evaluate.class_map(ICBHI, shuffled)
    assert cmap.classes == ICBHI and cmap.annotated(shuffled).tolist() == [0, 2, 1, 3]
    # A user's map onto the run's classes; '' leaves a class out.
    records = ("Normal", "Poor Quality", "CAS", "DAS", "CAS & DAS")
    table = evaluate.parse_mapping("Normal=normal, Poor Quality=,CAS=wheeze,DAS=crackle,"
                                   "CAS & DAS=both")
    cmap = evaluate.class_map(ICBHI, records, table)
    assert cmap.origin == "--mapping" and cmap.annotated(records).tolist() == [0, -1, 2, 1, 3]


def test_a_map_in_a_json_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"normal": "Normal", "crackle": "Fine Crackle",
                                "wheeze": "Wheeze", "both": "Wheeze+Crackle"}))
    cmap = evaluate.class_map(ICBHI, SPR, evaluate.parse_mapping(str(path)))
    assert cmap.side == evaluate.PREDICTIONS and cmap.classes == SPR


# The map written out by hand from docs/method.md §13.2, independently of sprsound.CLASS_MAPS.
SPR_ON_ICBHI = {"Normal": "normal", "Rhonchi": "wheeze", "Wheeze": "wheeze", "Stridor": "wheeze",
                "Coarse Crackle": "crackle", "Fine Crackle": "crackle",
                "Wheeze+Crackle": "both"}


def _predictions(dataset, classes, labels, probs):
    n = len(labels)
    return evaluation.Predictions(
        dataset=dataset, classes=tuple(classes), stem=np.array([f"r{i // 3}" for i in range(n)]),
        index=np.arange(n) % 3, start=np.zeros(n), end=np.ones(n),
        patient=np.array([f"p{i // 6}" for i in range(n)]), fields={"sex": np.array(["F"] * n)},
        label=np.asarray(labels), predicted=np.asarray(probs).argmax(1),
        probabilities=np.asarray(probs, np.float32))


def _sp_se(label, pred):
    """ICBHI's Sp and Se (docs/method.md §6), in numpy: normal cycles predicted normal;
    the others predicted as their exact class."""
    normal = label == 0
    return 100 * np.mean(pred[normal] == 0), 100 * np.mean(pred[~normal] == label[~normal])


def test_through_the_map_both_ways_against_a_computation_by_hand():
    rng = np.random.default_rng(4)
    # An ICBHI run on SPRSound events: every event class, the run's 4 probabilities.
    labels = np.concatenate([np.arange(7), rng.integers(0, 7, 29)])
    probs = rng.dirichlet(np.ones(4), len(labels))
    p = _predictions("sprsound", SPR, labels, probs)
    mapped, left_out = evaluate.through_map(p, evaluate.class_map(ICBHI, SPR), ICBHI)
    want = np.array([ICBHI.index(SPR_ON_ICBHI[SPR[k]]) for k in labels])
    assert left_out == {} and mapped.classes == ICBHI and len(mapped) == len(labels)
    np.testing.assert_array_equal(mapped.label, want)
    np.testing.assert_array_equal(mapped.predicted, probs.argmax(1))
    np.testing.assert_allclose(mapped.probabilities, probs, rtol=1e-6)
    assert mapped.fields["original_class"].tolist() == [SPR[k] for k in labels]
    sp, se = _sp_se(want, probs.argmax(1))
    assert (mapped.scores()["sp"], mapped.scores()["se"]) == pytest.approx((sp, se))

    # And back: a SPRSound run on ICBHI cycles, its 7 probabilities summed per ICBHI class;
    # the prediction is the arg max of the sums, not the map of the fine arg max.
    labels = np.concatenate([np.arange(4), rng.integers(0, 4, 20)])
    probs = rng.dirichlet(np.ones(7), len(labels))
    probs[0] = [0.4, 0.3, 0.3, 0, 0, 0, 0]   # Normal first, but wheeze in sum
    p = _predictions("icbhi", ICBHI, labels, probs)
    mapped, left_out = evaluate.through_map(p, evaluate.class_map(SPR, ICBHI), SPR)
    sums = np.zeros((len(labels), 4))
    for j, c in enumerate(SPR):
        sums[:, ICBHI.index(SPR_ON_ICBHI[c])] += probs[:, j]
    assert left_out == {} and "original_class" not in mapped.fields
    np.testing.assert_array_equal(mapped.label, labels)
    np.testing.assert_allclose(mapped.probabilities, sums, rtol=1e-5)
    np.testing.assert_array_equal(mapped.predicted, sums.argmax(1))
    assert mapped.predicted[0] == ICBHI.index("wheeze")
    sp, se = _sp_se(labels, sums.argmax(1))
    assert (mapped.scores()["sp"], mapped.scores()["se"]) == pytest.approx((sp, se))


def test_a_class_mapped_to_nothing_is_left_out_and_counted():
    records = ("Normal", "Poor Quality", "CAS", "DAS", "CAS & DAS")
    table = evaluate.parse_mapping("Normal=normal,Poor Quality=,CAS=wheeze,DAS=crackle,"
                                   "CAS & DAS=both")
    labels = np.array([0, 1, 1, 2, 3, 4, 1, 0])
    probs = np.random.default_rng(5).dirichlet(np.ones(4), len(labels))
    p = _predictions("sprsound", records, labels, probs)
    mapped, left_out = evaluate.through_map(p, evaluate.class_map(ICBHI, records, table), ICBHI)
    assert left_out == {"Poor Quality": 3}
    kept = labels != 1
    assert mapped.keys() == [k for k, keep in zip(p.keys(), kept) if keep]
    assert mapped.label.tolist() == [0, 2, 1, 3, 0]
    np.testing.assert_allclose(mapped.probabilities, probs[kept], rtol=1e-6)


@pytest.mark.parametrize("table, message", [
    ({"Normal": "normal"}, "maps neither the dataset's classes"),
    ({**sprsound.CLASS_MAPS["icbhi"], "Rhonchi": "rhonchus"}, "maps neither"),
])
def test_incomplete_or_unknown_maps_are_refused(table, message):
    with pytest.raises(ValueError, match=message):
        evaluate.class_map(ICBHI, SPR, table)


def test_no_map_between_unrelated_classes_asks_for_one():
    with pytest.raises(ValueError, match="no class map between the run's classes .* pass "
                                         "--mapping"):
        evaluate.class_map(ICBHI, ("yes", "no"))
    with pytest.raises(ValueError, match="'Normal' is not 'from=to'"):
        evaluate.parse_mapping("Normal")


@pytest.mark.slow   # trains the session's tiny runs; prepares a SPRSound set; a subprocess
def test_command_writes_what_report_and_compare_read(trained_runs, tmp_path):
    """The tiny ICBHI CE run on a tiny synthetic SPRSound set: predictions.csv in ICBHI's
    classes whose scores are results.json's, the SPRSound class of each event kept, the
    run's own preprocessing; report and report --compare read the folder like a run's."""
    root = synthetic.write_sprsound(tmp_path / "spr", recordings=12, seed=2)
    out = tmp_path / "on_spr"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "resp_jax.evaluate", f"--workdir={trained_runs['ce']}",
         "--dataset=sprsound", f"--data_dir={root}", f"--tfds_dir={tmp_path / 'tfds'}",
         f"--out={out}", "--resamples=200"], env=env, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in the classes ['normal', 'crackle', 'wheeze', 'both']" in done.stdout
    res = json.loads((out / "results.json").read_text())
    assert (res["dataset"], res["test_split"]) == ("sprsound", "inter_test")
    assert res["evaluation"]["map"] == sprsound.CLASS_MAPS["icbhi"]
    p = evaluation.read(out / "predictions.csv", res["dataset"])
    assert p.classes == ICBHI
    assert {k: p.scores()[k] for k in ("sp", "se", "score")} == {
        k: res["test"][k] for k in ("sp", "se", "score")}
    events = sprsound.read(root).split("inter_test")
    assert [(c.stem, c.index) for c in events] == p.keys()
    assert p.fields["original_class"].tolist() == [c.label_name for c in events]
    assert p.label.tolist() == [ICBHI.index(SPR_ON_ICBHI[c.label_name]) for c in events]
    # The run's model, features and standardisation: the probabilities of the events' audio
    # cut and classified by the run (`TrainedRun.classify_waves`, batched in the same order).
    from resp_jax import finished_run
    from resp_jax.data import audio
    run = finished_run.load(trained_runs["ce"])
    waves = [audio.cut(audio.load(c.wav_path), c.start, c.end) for c in events]
    direct = run.classify_waves(waves)["probabilities"]
    np.testing.assert_allclose(p.probabilities, direct, rtol=1e-4, atol=1e-5)
    # report --workdir and report --compare read it.
    path = report.report(out)
    assert "evaluated on sprsound (inter_test)" in path.read_text()
    assert (out / "report" / "confusion.png").is_file()
    text = comparison.difference(out, out, resamples=100)
    assert "Score difference A - B: 0.00" in text
