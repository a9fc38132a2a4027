"""`resp_jax.data.sources`: the registry of datasets, what every Source must provide, and the
rule that only a dataset's own files know its name (generic modules ask the Source)."""

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from resp_jax.data import manifest, prepare, readers, records, sources, synthetic

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resp_jax"


def _own_files() -> set:
    """The files allowed to name a dataset: its module, its synthetic writer, the registry."""
    own = {PACKAGE / "data" / "sources.py"}
    for name, module in sources.REGISTRY.items():
        own.add(ROOT / (module.replace(".", "/") + ".py"))
        writer = sources.get(name).synthetic
        if writer:
            own.add(ROOT / (writer.split(":")[0].replace(".", "/") + ".py"))
    return own


def name_uses(source: str, names=sources.NAMES) -> list:
    """``(line, what)`` of every place ``source`` compares with, looks up or keys on a dataset
    name: a comparison with a name (``== 'icbhi'``, ``in ('icbhi', ...)``), a subscript or dict
    key that is a name, or a constant named after one (``records.ICBHI``)."""
    consts = {n.upper() for n in names}
    found = []

    def named(node) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(named, node.elts))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(map(named, [node.left, *node.comparators])):
            found.append((node.lineno, "compares with a dataset name"))
        elif isinstance(node, ast.Subscript) and named(node.slice):
            found.append((node.lineno, "looks a dataset name up"))
        elif isinstance(node, ast.Dict) and any(named(k) for k in node.keys if k is not None):
            found.append((node.lineno, "keys a table on dataset names"))
        elif isinstance(node, (ast.Attribute, ast.Name)) and \
                (node.attr if isinstance(node, ast.Attribute) else node.id) in consts:
            found.append((node.lineno, "uses a dataset-name constant"))
    return found


@pytest.mark.parametrize("code", [
    'if config.data.name == "sprsound": pass',
    'x = dataset != "icbhi"',
    'ok = name in ("manifest", "other")',
    'DEFAULTS = {"icbhi": 400}',
    'epochs = DEFAULTS["hf_lung"]',
    'from resp_jax.data import records\nif d == records.ICBHI: pass',
])
def test_the_check_finds_each_kind_of_name_use(code):
    assert name_uses(code)


def test_generic_modules_never_compare_dataset_names():
    """Only a dataset's module, its synthetic writer and the registry name a dataset; every
    other module (and the experiment configs) asks its `Source`."""
    own = _own_files()
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "configs").glob("*.py")):
        if path not in own:
            offenders += [f"{path.relative_to(ROOT)}:{line}: {what}"
                          for line, what in name_uses(path.read_text())]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", sources.NAMES)
def test_every_registered_source_is_complete(name):
    source = sources.get(name)
    assert source.name == name and source.title
    assert source.epochs > 0 and isinstance(source.class_weighted, bool)
    assert callable(source.writer())
    assert sources.OFFICIAL in source.protocols
    if source.schema_from_data:
        return
    schema = source.schema()
    assert schema.stored_fields == sources.BASE_FIELDS
    assert len(set(schema.classes)) == len(schema.classes) >= 2
    assert set(source.inspect_fields) <= set(schema.fields)
    assert schema == sources.schema(json.loads(json.dumps(
        {"name": name, "classes": schema.classes, "fields": schema.to_config()})))
    splits = source.splits_of("")
    assert splits[0] == "train" and source.test_split_of(splits) in splits[1:]


def test_unknown_names_and_protocols_are_errors_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'esc50'; expected one of \('icbhi'"):
        sources.get("esc50")
    icbhi = sources.get("icbhi")
    splits = {"train": [1, 2], "test": [3]}
    assert icbhi.protocol_splits(splits) == {"train": [1, 2], "test": [3]}
    with pytest.raises(ValueError, match="no protocol 'lodo'; expected one of"):
        icbhi.protocol_splits(splits, "lodo")
    with pytest.raises(KeyError, match="no split 'test'"):
        icbhi.protocol_splits({"train": [1]})


def test_annotation_files_go_to_the_source_whose_ending_is_longest(tmp_path):
    assert sources.by_annotation("a/101_1b1_Al_sc_Meditron.txt").name == "icbhi"
    assert sources.by_annotation("steth_20190801_10_55_11_label.txt").name == "hf_lung"
    assert sources.by_annotation("x.JSON").name == "sprsound"
    with pytest.raises(records.DataError, match="unknown annotation format; expected one of: "
                                                "ICBHI 2017 \\(\\*.txt\\)"):
        sources.by_annotation(tmp_path / "a.csv")


def _as_manifest(source, root, csv):
    """A manifest of every cycle ``source`` reads under ``root`` (audio paths absolute, the
    reader's order and times), with its schema's metadata as columns."""
    fields = [f for f in source.schema().fields[1:]]
    rows = [{"path": c.wav_path, "start": repr(c.start), "end": repr(c.end),
             "label": c.label_name, "split": c.split, "patient": c.patient or "?",
             **{f: getattr(c, f) for f in fields}} for c in source.read(root).cycles]
    return manifest.write(csv, rows, fields)


@pytest.mark.slow  # two tiny runs
def test_sprsound_trains_exactly_as_a_manifest_of_its_cycles(tmp_path):
    """SPRSound's Source and the generic manifest reader, given the same cycles, prepare the
    same audio in the same order and give the same run: every step's loss and the test
    metrics (`test_manifest.py` shows the same for ICBHI on real annotation files)."""
    name = "sprsound"
    from resp_jax import configuration, train
    from resp_jax.data import run_data
    from train_helpers import tiny_config

    source = sources.get(name)
    root = synthetic.write(name, tmp_path / "root", recordings=9, seed=1)
    csv = _as_manifest(source, root, tmp_path / "m.csv")
    runs = {}
    for data_name, data_root in ((name, root), ("manifest", csv)):
        config = tiny_config("ce", epochs=1, train__log_every=1)
        config.data.name, config.data.root = data_name, str(data_root)
        config.data.tfds_dir = str(tmp_path / "tfds")
        config.data.classes, config.data.normal_class = source.classes, source.classes[0]
        config.data.test_split = source.test_split_of(source.splits_of(root))
        config.loss.class_weighted = source.class_weighted
        data = run_data.load(configuration.resolve(config))
        results = train.train_and_evaluate(config, tmp_path / data_name)
        lines = [json.loads(l) for l in (tmp_path / data_name / "metrics.jsonl").read_text()
                 .splitlines()]
        runs[data_name] = (data, results, lines)
    (d1, r1, l1), (d2, r2, l2) = runs[name], runs["manifest"]
    assert d1.sizes == d2.sizes and d1.norm == d2.norm
    for split in ("train", d1.test_split):
        a, b = d1.features[split], d2.features[split]
        assert [os.path.basename(s) for s in b.stem] == list(a.stem)
        np.testing.assert_array_equal(a.codes["label"], b.codes["label"])
        np.testing.assert_array_equal(a.x, b.x)
    assert len(l1) == len(l2) > 4
    for x, y in zip(l1, l2):   # the same entries, less the challenge score a manifest lacks
        assert {k for k in x.keys() ^ y.keys() if "sprsound_score" not in k} == set()
        for key in x.keys() & y.keys():
            if isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x, key)
    shared = r1["test"].keys() & r2["test"].keys()
    assert {k: r1["test"][k] for k in shared} == pytest.approx(
        {k: r2["test"][k] for k in shared}, rel=1e-5)


def test_readers_go_through_the_source(tmp_path):
    root = synthetic.write("sprsound", tmp_path / "spr", recordings=6, seed=2)
    via = readers.read("sprsound", root, annotations_only=True)
    assert via.cycles == sources.get("sprsound").read(root, annotations_only=True).cycles
    assert via.splits == ("train", "inter_test", "intra_test")
    schema, splits, normal = readers.describe("sprsound", str(root))
    assert (schema.classes[0], splits, normal) == ("Normal", via.splits, "Normal")
    p = prepare.Prepared("sprsound", str(root), {}, [])
    assert p.schema == sources.schema("sprsound")
