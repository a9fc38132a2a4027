"""resp_jax.evaluation: prediction files and the statistics computed from them, each checked
against an independent implementation written here (plain loops over resamples)."""

import numpy as np
import pytest
from scipy import stats

from resp_jax import evaluation, metrics
from resp_jax.data import metadata

ICBHI = metadata.fixed_schema("icbhi")


def make_predictions(patients=30, seed=0, dataset="icbhi", spread=1.0, cycles=(5, 40)):
    """Random predictions: each patient its own cycle count, class mix and accuracy (drawn
    around 0.6 with ``spread``: 0 makes every patient equally accurate)."""
    rng = np.random.default_rng(seed)
    classes = metadata.fixed_schema(dataset).classes
    c = len(classes)
    stem, patient, label, pred, sex = [], [], [], [], []
    for i in range(patients):
        n = int(rng.integers(*cycles))
        accuracy = np.clip(0.6 + spread * rng.uniform(-0.35, 0.35), 0, 1)
        lab = rng.choice(c, n, p=rng.dirichlet(np.ones(c)))
        right = rng.random(n) < accuracy
        label.append(lab)
        pred.append(np.where(right, lab, (lab + rng.integers(1, c, n)) % c))
        patient += [f"{100 + i}"] * n
        stem += [f"{100 + i}_1b1"] * n
        sex += [("M", "F", "")[i % 3]] * n
    label, pred = np.concatenate(label), np.concatenate(pred)
    n = len(label)
    prob = rng.dirichlet(np.ones(c), n).astype(np.float32)
    return evaluation.Predictions(
        dataset=dataset, classes=classes, stem=np.array(stem), index=np.arange(n),
        start=np.arange(n) * 0.5, end=np.arange(n) * 0.5 + 0.4, patient=np.array(patient),
        fields={"sex": np.array(sex)}, label=label, predicted=pred, probabilities=prob)


def loop_scores(label, pred):
    """Sp, Se, Score, HS written out (NaN where a rate has no cycle to count)."""
    normal, abnormal = label == 0, label > 0
    sp = 100 * np.mean(pred[normal] == 0) if normal.any() else np.nan
    se = 100 * np.mean(pred[abnormal] == label[abnormal]) if abnormal.any() else np.nan
    hs = 2 * se * sp / (se + sp) if se + sp > 0 else (np.nan if np.isnan(se + sp) else 0.0)
    return {"sp": sp, "se": se, "score": (sp + se) / 2, "hs": hs,
            "sprsound_score": ((sp + se) / 2 + hs) / 2}


def loop_bootstrap(p, resamples, seed=evaluation.SEED):
    """Each resample: draw len(patients) patients with replacement, pool their cycles."""
    patients = sorted(set(p.patient.tolist()))
    rows = {q: np.flatnonzero(p.patient == q) for q in patients}
    draws = np.random.default_rng(seed).integers(0, len(patients), (resamples, len(patients)))
    out = []
    for draw in draws:
        take = np.concatenate([rows[patients[k]] for k in draw])
        out.append(loop_scores(p.label[take], p.predicted[take]))
    return {k: np.array([o[k] for o in out]) for k in out[0]}


def percentile_interval(values):
    v = values[~np.isnan(values)]
    return np.percentile(v, [2.5, 97.5])


@pytest.mark.parametrize("dataset", ["icbhi", "sprsound"])
def test_bootstrap_matches_a_loop_over_resamples(dataset):
    p = make_predictions(dataset=dataset)
    got = evaluation.bootstrap(p, resamples=300)
    want = loop_bootstrap(p, 300)
    keys = ("sp", "se", "score", "hs") + (("sprsound_score",) if dataset == "sprsound" else ())
    assert set(got) == set(keys)
    for k in keys:
        np.testing.assert_allclose(got[k], percentile_interval(want[k]), rtol=0, atol=1e-9)
        point = p.scores()[k]
        assert got[k][0] <= point <= got[k][1]   # the observed figure lies inside here


def test_resample_counts_draw_every_patient_count_once_per_resample():
    counts = evaluation.resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all()
    draws = np.random.default_rng(3).integers(0, 7, (500, 7))
    assert (counts[42] == np.bincount(draws[42], minlength=7)).all()
    with pytest.raises(ValueError, match="needs patients"):
        evaluation.resample_counts(0, 10)


def test_score_arrays_equal_metrics_scores_where_defined():
    rng = np.random.default_rng(1)
    cms = rng.integers(0, 20, (50, 4, 4))
    cms[0, 0] = 0         # no normal cycle: Sp undefined (NaN here, 0 in metrics)
    got = evaluation.score_arrays(cms)
    for i, cm in enumerate(cms):
        want = metrics.scores(cm)
        for k in ("sp", "se", "score", "hs"):
            if i == 0 and k != "se":
                assert np.isnan(got[k][i])
            else:
                assert got[k][i] == pytest.approx(want[k], abs=1e-12)


def test_cycle_level_interval_is_narrower_when_cycles_of_a_patient_are_correlated():
    """Patients differ in accuracy, so their cycles' errors go together: resampling cycles
    as if independent understates the uncertainty; with equally accurate patients the two
    agree."""
    def widths(spread):
        p = make_predictions(patients=40, seed=5, spread=spread, cycles=(20, 30))
        cycle_level = evaluation.Predictions(**{**p.__dict__,
                                                "patient": np.arange(len(p)).astype(str)})
        return [np.diff(evaluation.bootstrap(q, 1000)["score"])[0] for q in (p, cycle_level)]

    patient_width, cycle_width = widths(spread=1.3)
    assert patient_width > 1.6 * cycle_width, (patient_width, cycle_width)
    patient_width, cycle_width = widths(spread=0.0)
    assert 0.7 < patient_width / cycle_width < 1.4, (patient_width, cycle_width)


def other_run(p, seed=9, flips=0.3):
    """The same cycles, other predictions."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(p)) < flips
    return evaluation.Predictions(**{**p.__dict__, "predicted": np.where(
        flip, rng.integers(0, len(p.classes), len(p)), p.predicted)})


def test_paired_difference_matches_a_loop():
    a = make_predictions()
    b = other_run(a)
    got = evaluation.paired(a, b, resamples=400)
    boot_a, boot_b = loop_bootstrap(a, 400), loop_bootstrap(b, 400)
    for k in ("sp", "se", "score"):
        d = boot_a[k] - boot_b[k]
        d = d[~np.isnan(d)]
        m = got["metrics"][k]
        assert m["difference"] == a.scores()[k] - b.scores()[k]
        np.testing.assert_allclose(m["interval"], np.percentile(d, [2.5, 97.5]), atol=1e-9)
        far = min((d <= 0).sum(), (d >= 0).sum())
        assert m["p"] == pytest.approx(min(1.0, 2 * (1 + far) / (len(d) + 1)))
    assert got["patients"] == 30 and got["cycles"] == len(a)
    # B's rows in another order pair the same cycles: the same result.
    order = np.random.default_rng(0).permutation(len(b))
    shuffled = evaluation.paired(a, b.take(order), resamples=400)
    assert shuffled["metrics"] == got["metrics"]


def test_a_run_against_itself_differs_by_zero_with_p_one():
    a = make_predictions()
    got = evaluation.paired(a, a, resamples=200)
    for m in got["metrics"].values():
        assert m["difference"] == 0 and m["interval"] == [0.0, 0.0] and m["p"] == 1.0


def test_a_clear_difference_has_a_small_p_value():
    a = make_predictions(patients=40)
    b = evaluation.Predictions(**{**a.__dict__, "predicted": np.zeros_like(a.predicted)})
    score = evaluation.paired(a, b, resamples=500)["metrics"]["score"]
    assert score["difference"] > 10 and score["interval"][0] > 0
    assert score["p"] == pytest.approx(2 / 501)


def test_pairing_refuses_runs_evaluated_on_different_cycles():
    a = make_predictions()
    with pytest.raises(ValueError, match=r"different test cycles: \d+ vs \d+ cycles; 1 only "
                                         r"in A \(100_1b1#0\), 0 only in B"):
        evaluation.paired(a, a.take(np.arange(1, len(a))))
    relabelled = evaluation.Predictions(**{**a.__dict__, "label": (a.label + 1) % 4})
    with pytest.raises(ValueError, match="differ in the annotated class of"):
        evaluation.paired(a, relabelled)
    with pytest.raises(ValueError, match="icbhi run .* sprsound run"):
        evaluation.paired(a, make_predictions(dataset="sprsound"))


def test_subgroups_match_a_loop():
    p = make_predictions(patients=24)
    p.label[p.fields["sex"] == "M"] = 0           # no abnormal cycle among the men: Se n/a
    rows = evaluation.subgroups(p, resamples=200, order={"sex": ("M", "F")})
    assert [(r["field"], r["value"]) for r in rows] == [("sex", "M"), ("sex", "F"),
                                                        ("sex", "")]
    for r in rows:
        sub = p.take(np.flatnonzero(p.fields["sex"] == r["value"]))
        assert r["cycles"] == len(sub) and r["patients"] == len(set(sub.patient))
        point, boot = loop_scores(sub.label, sub.predicted), loop_bootstrap(sub, 200)
        for k in ("sp", "se", "score"):
            if np.isnan(point[k]):
                assert np.isnan(r[k]["value"]) and r[k]["interval"] is None
            else:
                assert r[k]["value"] == pytest.approx(point[k])
                np.testing.assert_allclose(r[k]["interval"], percentile_interval(boot[k]),
                                           atol=1e-9)
    assert np.isnan(rows[0]["se"]["value"])


def test_across_seeds_and_welch_match_their_formulas():
    a = np.array([58.1, 57.2, 59.4, 58.8, 57.9])
    b = np.array([56.0, 57.5, 55.1, 56.6])
    s = evaluation.across_seeds(a)
    half = stats.t.ppf(0.975, 4) * np.sqrt(((a - a.mean()) ** 2).sum() / 4) / np.sqrt(5)
    assert s["mean"] == pytest.approx(a.mean()) and s["std"] == pytest.approx(a.std())
    np.testing.assert_allclose(s["interval"], [a.mean() - half, a.mean() + half])
    assert evaluation.across_seeds([57.0])["interval"] is None
    # Two seeds: t(1) * s / sqrt(2) = 12.7 * 8.49 / 1.41 = 76.2 around 94 reaches past 100.
    half = stats.t.ppf(0.975, 1) * np.std([88.0, 100.0], ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(evaluation.across_seeds([88.0, 100.0])["interval"],
                               [94.0 - half, 100.0])

    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 4
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 3)
    w = evaluation.welch(a, b)
    assert w["t"] == pytest.approx(t) and w["df"] == pytest.approx(df)
    assert w["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    q = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    np.testing.assert_allclose(w["interval"], [a.mean() - b.mean() - q,
                                               a.mean() - b.mean() + q])
    same = evaluation.welch(a, a)
    assert same["difference"] == 0 and same["p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        evaluation.welch(a, [57.0])
    flat = evaluation.welch([100.0, 100.0], [100.0, 100.0, 100.0])  # Sp of two sweeps, say
    assert flat["t"] is None and flat["p"] == 1.0 and flat["interval"] == [0.0, 0.0]
    assert evaluation.welch([100.0, 100.0], [90.0, 90.0])["p"] is None


def test_predictions_file_round_trip(tmp_path):
    p = make_predictions(patients=6)
    p.start[3] = np.nan                          # unknown: an empty cell
    p.start[4] = 0.1 + 0.2                       # every digit of a float64 survives
    path = tmp_path / evaluation.PREDICTIONS_FILE
    evaluation.write(path, p)
    header = path.read_text().splitlines()[0]
    assert header == ("stem,index,start,end,patient,sex,annotated,predicted,p_normal,"
                      "p_crackle,p_wheeze,p_both")
    back = evaluation.read(path, "icbhi")
    for k in ("stem", "index", "end", "patient", "label", "predicted", "probabilities"):
        assert np.array_equal(getattr(back, k), getattr(p, k)), k
    assert np.array_equal(back.start, p.start, equal_nan=True)
    assert back.probabilities.dtype == np.float32 and back.classes == p.classes
    assert np.array_equal(back.fields["sex"], p.fields["sex"])
    assert back.scores() == p.scores()
    # A metadata column that starts like a probability column stays a metadata column.
    p.fields = {"p_site": np.where(p.label > 0, "a", "")}
    evaluation.write(path, p)
    assert list(evaluation.read(path, "icbhi").fields) == ["p_site"]


def test_from_outputs_names_metadata_values():
    from resp_jax.data import feature_store
    codes = {f: np.array([0, -1], np.int32) for f in ICBHI.stored_fields}
    codes["label"] = np.array([2, 0], np.int32)
    split = feature_store.SplitFeatures.of(np.zeros((2, 4, 3)), codes, ["a", "b"], ["1", "2"],
                                           [3, 0], [0.5, 1.0], [1.5, 2.0])
    outputs = {"label": codes["label"], "pred": np.array([2, 1]),
               "prob": np.array([[.1, .1, .7, .1], [.3, .4, .2, .1]], np.float32)}
    p = evaluation.from_outputs(split, outputs, ICBHI)
    assert list(p.fields) == ["sex", "age_group", "device", "location", "mode", "diagnosis"]
    assert p.fields["device"].tolist() == ["AKGC417L", ""]
    assert p.keys() == [("a", 3), ("b", 0)] and p.start.tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="do not line up"):
        evaluation.from_outputs(split, {**outputs, "label": np.array([2, 1])}, ICBHI)


def test_bad_files_are_named(tmp_path):
    path = tmp_path / "p.csv"
    evaluation.write(path, make_predictions(patients=2))
    lines = [line.split(",") for line in path.read_text().splitlines()]
    lines[2][lines[0].index("annotated")] = "rattle"
    path.write_text("\n".join(",".join(line) for line in lines) + "\n")
    with pytest.raises(ValueError, match=r"p\.csv:3: .* class 'rattle' is not one of"):
        evaluation.read(path, "icbhi")
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"p\.csv:1: not a predictions file"):
        evaluation.read(path, "icbhi")
    with pytest.raises(FileNotFoundError, match="train it again"):
        evaluation.read(tmp_path / "none.csv", "icbhi")
    manifest = metadata.Schema("manifest", ("normal", "x"), (("p_x", ("a",)),))
    with pytest.raises(ValueError, match=r"\['p_x'\] .* rename the column"):
        evaluation.columns(manifest)
