"""The manifest dataset (README, "Your own recordings"): a CSV over any recordings read like
ICBHI, its errors named by CSV line and column, its schema resolved into the config, its
prepared copy keyed by content, and a run, predict, report and embed on it."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
from absl import flags
from ml_collections import config_flags

from resp_jax import configuration
from resp_jax.data import (icbhi, inspect, manifest, metadata, prepare, prepared_copies,
                           readers, synthetic)
from resp_jax.data.records import DataError
from train_helpers import CONFIGS, load_config, tiny_config

SR = 8000


@pytest.fixture(scope="module")
def icbhi_csv(tiny_icbhi, tmp_path_factory):
    """The tiny synthetic ICBHI set as a manifest (absolute paths), and its ICBHI root."""
    csv = synthetic.from_icbhi(tiny_icbhi["root"], tmp_path_factory.mktemp("m") / "m.csv")
    return csv, tiny_icbhi["root"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The small example of `python -m resp_jax.data.synthetic --dataset=manifest`."""
    return synthetic.write("manifest", tmp_path_factory.mktemp("ex") / "ex", recordings=8)


def _wav(path, seconds=2.0, fmt=None):
    rng = np.random.default_rng(0)
    sf.write(str(path), 0.1 * rng.standard_normal(int(seconds * SR)).astype(np.float32), SR,
             format=fmt)
    return path


@pytest.fixture
def small(tmp_path):
    """A folder with a.wav (2 s) and b.flac (3 s), and a writer of manifests over them."""
    _wav(tmp_path / "a.wav", 2.0)
    _wav(tmp_path / "b.flac", 3.0, "FLAC")

    def write(rows, header="path,start,end,label,split,patient,sex,age"):
        path = tmp_path / "manifest.csv"
        path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
        return path
    return write


GOOD = ["a.wav,0,1,normal,train,p1,M,40",
        "a.wav,1,2,crackle,train,p1,M,40",
        "b.flac,,,wheeze,test,p2,F,",
        "b.flac,0.5,1.5,normal,test,p2,F,"]


def test_same_cycles_labels_metadata_and_counts_as_the_icbhi_reader(icbhi_csv, caplog):
    csv, root = icbhi_csv
    want = readers.read("icbhi", root)
    with caplog.at_level(logging.WARNING):
        got = readers.read("manifest", csv, classes=icbhi.CLASSES)
    assert "clamped" in caplog.text   # the synthetic set's cycles past the end of the audio
    assert len(got.cycles) == len(want.cycles) > 0 and got.skipped == []
    for m, c in zip(got.cycles, want.cycles):
        assert (m.split, m.patient, m.start, m.end, m.label, m.label_name, m.index, m.wav_path) \
            == (c.split, c.patient, c.start, c.end, c.label, c.label_name, c.index, c.wav_path)
        assert os.path.basename(m.stem) == c.stem
        for field in ("sex", "age_group", "device", "location", "mode", "diagnosis"):
            assert metadata.value(m, field) == metadata.value(c, field), field
        age = metadata.value(m, "age")
        assert (age and float(age)) == c.age
    assert inspect.summarize("manifest", got)["splits"] == inspect.summarize("icbhi", want)["splits"]
    # Default classes: the labels found, 'normal' first, the others sorted.
    assert readers.read("manifest", csv).classes == ("normal", "both", "crackle", "wheeze")


def test_prepared_copy_holds_the_icbhi_cycles_and_metadata(icbhi_csv, tiny_icbhi):
    csv, root = icbhi_csv
    schema = manifest.describe(csv, icbhi.CLASSES)[0]
    got = prepare.load("manifest", csv, data_dir=tiny_icbhi["tfds"], schema=schema)
    want = prepare.load("icbhi", root, data_dir=tiny_icbhi["tfds"])   # shared by the session
    assert set(got.splits) == {"train", "test"} and got.schema == schema
    for split in ("train", "test"):
        g, w = got[split], want[split]
        np.testing.assert_array_equal(g.label, w.label)
        assert [os.path.basename(s) for s in g.stem] == w.stem and g.patient == w.patient
        for u, v in zip(g.audio, w.audio):
            np.testing.assert_array_equal(u, v)
        for field in ("sex", "age_group", "device", "location", "mode", "diagnosis"):
            names = lambda spec, codes: [None if k < 0 else metadata.vocab(spec, field)[k]  # noqa
                                         for k in codes]
            assert names(schema, g.codes[field]) == names("icbhi", w.codes[field]), field
        sa = metadata.combine(schema, "sex+age_group", g.codes)
        assert ((sa >= 0) == (w.codes["sex"] >= 0) & (w.codes["age_group"] >= 0)).all()


def test_example_reads_flac_and_wav_relative_to_the_csv(example):
    result = readers.read("manifest", example)
    paths = {c.wav_path for c in result.cycles}
    assert any(p.endswith(".flac") for p in paths) and any(p.endswith(".wav") for p in paths)
    assert all(p.startswith(str(example.parent / "audio")) for p in paths)
    assert result.splits == ("train", "test") and result.classes[0] == "normal"
    assert {f for f, _ in result.cycles[0].extra} == {"sex", "age", "age_group", "device",
                                                      "location", "mode", "diagnosis"}


def test_whole_files_any_format_and_field_values(small):
    csv = small(GOOD)
    result = readers.read("manifest", csv)
    whole = result.cycles[2]
    assert (whole.start, whole.end, whole.index, whole.stem) == (0.0, 3.0, 0, "b")
    schema, splits = manifest.describe(csv)
    assert schema.classes == ("normal", "crackle", "wheeze") and splits == ("train", "test")
    assert schema.vocab("sex") == ("F", "M") and schema.vocab("age_group") == ("adult",)
    assert [metadata.encode(c, "sex+age_group", schema) for c in result.cycles] == [1, 1, -1, -1]
    # data.classes orders the labels; the normal class is moved first.
    schema = manifest.describe(csv, ("wheeze", "crackle", "normal"))[0]
    assert schema.classes == ("normal", "wheeze", "crackle")
    assert [c.label for c in readers.read("manifest", csv, schema=schema).cycles] == [0, 2, 1, 0]


@pytest.mark.parametrize("header, rows, message", [
    ("path,start,end,label,split", GOOD, r"manifest.csv:1: missing required column\(s\) patient"),
    ("path,start,end,label,split,patient,sex+age", GOOD, r":1: column 'sex\+age': a metadata"),
    (None, GOOD[:1] + ["c.wav,0,1,normal,train,p1,M,40"],
     r"manifest.csv:3: column path: file not found.*c.wav"),
    (None, GOOD[:1] + ["bad.wav,0,1,normal,train,p1,M,40"],
     r"manifest.csv:3: column path: unreadable audio"),
    (None, GOOD[:1] + ["a.wav,1.5,0.5,normal,train,p1,M,40"],
     r"manifest.csv:3: column end: 0.5 s is not after start 1.5 s"),
    (None, GOOD[:1] + ["a.wav,0.5,,normal,train,p1,M,40"], r"manifest.csv:3: column end: empty"),
    (None, GOOD[:1] + ["a.wav,x,1,normal,train,p1,M,40"], r":3: column start: 'x' is not a"),
    (None, GOOD[:1] + ["a.wav,2.5,3,normal,train,p1,M,40"],
     r"manifest.csv:3: column start: segment 2.5-3.0 s starts at or past the end of the audio"),
    (None, GOOD[:1] + ["a.wav,0,1,rales,train,p1,M,40"],
     r"manifest.csv:3: column label: 'rales' is not one of data.classes"),
    (None, GOOD[:1] + ["a.wav,0,1,normal,train,p1,M,old"], r":3: column age: 'old' is not an age"),
    (None, GOOD[:1] + ["a.wav,0,1,normal,,p1,M,40"], r":3: column split: empty"),
    (None, GOOD[:1] + ["a.wav,0,1,normal,train,p1,M"], r":3: 7 cells, the header has 8"),
])
def test_errors_name_the_csv_line_and_column(small, tmp_path, header, rows, message):
    (tmp_path / "bad.wav").write_text("not audio")
    csv = small(rows, header) if header else small(rows)
    classes = ("normal", "crackle", "wheeze")
    with pytest.raises(DataError, match=message):
        readers.read("manifest", csv, classes=classes)
    if header is None:   # a bad row: skipped and counted on request
        result = readers.read("manifest", csv, classes=classes, skip_bad=True)
        assert len(result.cycles) == 1 and [s.line for s in result.skipped] == [3]


def test_clamped_segments_and_patients_in_two_splits_are_warnings(small, caplog):
    csv = small(GOOD + ["a.wav,1.5,2.5,normal,test,p1,M,40"])
    with caplog.at_level(logging.WARNING):
        result = readers.read("manifest", csv)
    assert result.cycles[-1].end == 2.0 and len(result.cycles) == 5
    assert "1 segment(s) end past the end of their audio and were clamped" in caplog.text
    assert "manifest.csv:6 (end 2.5 > 2.000 s)" in caplog.text
    assert "manifest.csv:6: column patient: patient 'p1' is in split 'test' here and in " \
           "split 'train' on line 2" in caplog.text


def test_classes_need_the_normal_class(small):
    csv = small([r.replace("normal", "healthy") for r in GOOD])
    with pytest.raises(DataError, match=r"column label: no 'normal' row .*set data.normal_class"):
        manifest.describe(csv)
    assert manifest.describe(csv, normal_class="healthy")[0].classes[0] == "healthy"
    with pytest.raises(ValueError, match="normal_class='normal' is not one of"):
        manifest.describe(csv, ("healthy", "crackle"))


def _manifest_config(csv, **data):
    config = load_config("mscl")
    config.data.name, config.data.root = "manifest", str(csv)
    for k, v in data.items():
        config.data[k] = v
    return config


def test_resolve_records_classes_fields_and_test_split(small, tmp_path):
    csv = small(GOOD)
    config = _manifest_config(csv)
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    r = configuration.resolve(config)
    assert r.data.classes == ("normal", "crackle", "wheeze") and r.data.normal_class == "normal"
    assert r.data.test_split == "test" and r.train.epochs == 400 and r.loss.class_weighted
    assert dict(r.data.fields)["age_group"] == ("adult",)
    assert metadata.schema(json.loads(r.to_json())["data"]) == manifest.describe(csv)[0]
    fixed = configuration.resolve(load_config("mscl"))
    assert fixed.data.classes == icbhi.CLASSES and fixed.data.normal_class == "normal"
    assert metadata.schema(fixed.data) == metadata.fixed_schema("icbhi")
    for bad, message in (
            (dict(root=""), "needs the CSV"),
            (dict(test_split="intra_test"), "config.data.test_split must be one of"),
            (dict(classes=("normal", "crackle")), r"column label: 'wheeze' is not one"),
    ):
        with pytest.raises(ValueError, match=message):
            configuration.resolve(_manifest_config(csv, **bad))
            readers.read("manifest", csv, classes=bad.get("classes"))
    config = _manifest_config(csv)
    config.loss.heads = (("label", 0.5), ("device", 0.5))
    with pytest.raises(ValueError, match="metadata field 'device' is not defined"):
        configuration.resolve(config)
    config = _manifest_config(small(GOOD[:2] + [r.replace("test", "val") for r in GOOD[2:]]),
                              test_split="val")
    config.eval.selection = "val"
    with pytest.raises(ValueError, match="has a split named 'val'"):
        configuration.resolve(config)
    with pytest.raises(ValueError, match="icbhi's classes are fixed"):
        configuration.resolve(_manifest_config(csv, name="icbhi", root="", classes=("a", "b")))


def test_runs_recorded_before_classes_existed_still_resume(tmp_path):
    config = configuration.resolve(load_config("mscl"))
    old = json.loads(config.to_json())
    for key in ("classes", "normal_class", "fields"):
        del old["data"][key]
    (tmp_path / "config.json").write_text(json.dumps(old))
    configuration.check_resume(tmp_path, config, resuming=True)
    config.data.duration = 4.0
    with pytest.raises(ValueError, match="differs in data.duration"):
        configuration.check_resume(tmp_path, config, resuming=True)


def test_classes_from_the_command_line(small):
    csv = small(GOOD)
    values = flags.FlagValues()
    argv = ["prog", f"--config={CONFIGS}/scl.py:quick", "--config.data.name=manifest",
            f"--config.data.root={csv}", "--config.data.classes=('normal','wheeze','crackle')"]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    assert configuration.resolve(values.config).data.classes == ("normal", "wheeze", "crackle")


def test_cache_keyed_by_csv_content_and_audio_files(small, tmp_path, monkeypatch):
    csv = small(GOOD)
    tfds = tmp_path / "tfds"
    first = prepare.load("manifest", csv, data_dir=tfds)
    assert [len(first[s]) for s in ("train", "test")] == [2, 2]
    key = prepared_copies.config_name("manifest", csv, tfds, first.schema)
    monkeypatch.setattr(readers, "read", lambda *a, **k: pytest.fail("cache not used"))
    again = prepare.load("manifest", csv, data_dir=tfds)
    assert again.splits.keys() == first.splits.keys() and again.schema == first.schema
    monkeypatch.undo()
    # An audio file's size or time changes the key; so does the CSV's content.
    os.utime(tmp_path / "b.flac", ns=(1, 1))
    assert prepared_copies.config_name("manifest", csv, tfds, first.schema) != key
    small(GOOD[:3])
    third = prepare.load("manifest", csv, data_dir=tfds)
    assert [len(third[s]) for s in ("train", "test")] == [2, 1]
    copies = [c for c in prepared_copies.copies(tfds) if c.dataset == "manifest"]
    assert len(copies) == 1   # the older copy of this CSV was removed
    assert prepared_copies.stale(tfds)[0] == []


def test_skip_bad_rows_survive_the_cache(small, tmp_path):
    csv = small(GOOD + ["gone.wav,0,1,normal,train,p3,,"])
    with pytest.raises(DataError, match=r"manifest.csv:6: column path: file not found"):
        prepare.load("manifest", csv, data_dir=tmp_path / "tfds")
    p = prepare.load("manifest", csv, data_dir=tmp_path / "tfds", skip_bad=True)
    assert len(p.skipped) == 1 and p.skipped[0].line == 6 and len(p["train"]) == 2
    with pytest.raises(DataError, match="1 bad item"):
        prepare.load("manifest", csv, data_dir=tmp_path / "tfds")


def test_a_bad_row_stops_a_run_with_one_line_naming_it(small, tmp_path, capsys):
    from resp_jax import cli

    config = tiny_config("ce")
    config.data.name, config.data.root = "manifest", str(small(GOOD + ["gone.wav,0,1,normal,"
                                                                       "train,p3,,"]))
    config.data.tfds_dir = str(tmp_path / "tfds")
    assert cli.run(config, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.csv:6: column path: file not found" in err[0]


@pytest.mark.slow
def test_run_predict_report_and_embed_on_a_manifest(example, tmp_path):
    from resp_jax import embed, finished_run, predict, report, train
    from resp_jax.data import run_data

    config = tiny_config("mscl", epochs=1)
    config.linear_eval.epochs = 1
    config.data.name, config.data.root = "manifest", str(example)
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["dataset"] == "manifest" and results["test_split"] == "test"
    assert 0 <= results["test"]["score"] <= 100
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["classes"][0] == "normal"
    assert set(dict(saved["fields"])["age_group"]) <= {"adult", "child"}

    run = finished_run.load(tmp_path / "run")
    assert run.classes == tuple(saved["classes"])
    flac = next((example.parent / "audio").glob("*.flac"))
    rows = predict.predict(run, [str(flac)])
    assert rows and set(rows[0]["probabilities"]) == set(run.classes)

    md = report.report(tmp_path / "run").read_text()
    assert "| normal |" in md and "sex" in md
    assert (tmp_path / "run" / "report" / "embedding.png").is_file()

    arrays = embed.embed(run, run_data.load(run.config), "test")
    assert tuple(arrays["label_names"]) == run.classes
    assert tuple(arrays["diagnosis_names"]) == tuple(dict(saved["fields"])["diagnosis"])
    assert len(arrays["sex"]) == results["cycles"]["test"]


@pytest.fixture(scope="module")
def real_stems_csv(icbhi_real, tmp_path_factory):
    """Synthetic audio for 8 real ICBHI annotation files (4 train, 4 test recordings whose
    reference order is not their stem order), its ICBHI root and its `from_icbhi` manifest."""
    from resp_jax.data import icbhi

    split = {}
    for line in (icbhi_real / icbhi.SPLIT_FILE).read_text().splitlines():
        if line.strip():
            stem, part = line.split()
            split[icbhi.split_key(stem)] = part
    ranks = icbhi.reference_ranks()
    chosen = {"train": [], "test": []}
    for stem in sorted(ranks, key=ranks.get):
        lines = (icbhi_real / icbhi.AUDIO_DIR / f"{stem}.txt").read_text().split("\n")
        part = split[icbhi.split_key(stem)]
        if len(chosen[part]) < 4 and sum(1 for l in lines if l.strip()) <= 8:
            chosen[part].append(stem)
    stems = chosen["train"] + chosen["test"]
    assert icbhi.in_reference_order(stems) != sorted(stems)
    base = tmp_path_factory.mktemp("real_stems")
    src = base / "src"
    (src / icbhi.AUDIO_DIR).mkdir(parents=True)
    for stem in stems:
        (src / icbhi.AUDIO_DIR / f"{stem}.txt").write_bytes(
            (icbhi_real / icbhi.AUDIO_DIR / f"{stem}.txt").read_bytes())
    keep = {icbhi.split_key(s) for s in stems}
    (src / icbhi.SPLIT_FILE).write_text("".join(
        f"{s}\t{split[icbhi.split_key(s)]}\n" for s in stems if icbhi.split_key(s) in keep))
    for name in (icbhi.DEMOGRAPHICS_FILES[0], icbhi.DIAGNOSIS_FILE):
        (src / name).write_bytes((icbhi_real / name).read_bytes())
    root = synthetic.write_icbhi(base / "root", from_annotations=src)
    return synthetic.from_icbhi(root, base / "m.csv"), root


@pytest.mark.slow
def test_a_manifest_from_icbhi_trains_exactly_as_the_icbhi_reader(real_stems_csv, tmp_path):
    """The same recordings read as ICBHI and as a manifest (`from_icbhi`), with the same
    config (ICBHI's class order given to both), give the same run: class weights,
    normalisation, cycle order (ICBHI's reference order, which the evaluation batches' min-max
    depends on), every pretraining step's loss, every linear epoch and the test metrics
    (M-SCL: a metadata head and the class-weighted linear stage)."""
    from resp_jax import train
    from resp_jax.data import run_data

    csv, root = real_stems_csv
    runs = {}
    for name, data_root in (("icbhi", root), ("manifest", csv)):
        config = tiny_config("mscl", epochs=2, train__log_every=1)
        config.data.name, config.data.root = name, str(data_root)
        config.data.tfds_dir = str(tmp_path / "tfds")
        config.data.classes = icbhi.CLASSES
        data = run_data.load(configuration.resolve(config))
        results = train.train_and_evaluate(config, tmp_path / name)
        lines = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text()
                 .splitlines()]
        runs[name] = (data, results, lines)
    (d1, r1, l1), (d2, r2, l2) = runs["icbhi"], runs["manifest"]
    np.testing.assert_array_equal(d1.class_weights, d2.class_weights)
    assert d1.norm == d2.norm and d1.sizes == d2.sizes
    for split in ("train", "test"):
        assert [os.path.basename(s) for s in d2.features[split].stem] == \
            list(d1.features[split].stem)
        np.testing.assert_array_equal(d1.features[split].x, d2.features[split].x)
        np.testing.assert_array_equal(d1.features.field(split, "sex+age_group") >= 0,
                                      d2.features.field(split, "sex+age_group") >= 0)
    assert len(l1) == len(l2) > 2 * 2 + 3
    for a, b in zip(l1, l2):
        assert a.keys() == b.keys() and (a["stage"], a.get("step"), a["epoch"]) == \
            (b["stage"], b.get("step"), b["epoch"])
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a, key)
    assert r1["test"] == pytest.approx(r2["test"], rel=1e-5)
    assert r1["norm"] == r2["norm"] and r1["epoch"] == r2["epoch"]
