"""SPRSound with its later challenge test sets (`resp_jax.data.sprsound_releases`): the
organisers' repository layout, the later sets' quirks, the 2022 part read exactly as
`sprsound` reads it, the default reported split, and the `inspect` counts."""

import dataclasses
import json
import shutil

import pytest

from resp_jax import configuration
from resp_jax.data import inspect, records, sources, sprsound, sprsound_releases, synthetic
from train_helpers import load_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.write("sprsound_releases", tmp_path_factory.mktemp("rel") / "SPRSound",
                           recordings=12, seed=5)


def test_every_release_is_a_split_and_the_2022_part_is_sprsound(root):
    result = sprsound_releases.read(root)
    assert result.skipped == []
    assert result.splits == ("train", "inter_test", "intra_test", "test2023", "test2024")
    assert set(result.splits) == {c.split for c in result.cycles}
    old = sprsound.read(root)
    assert [dataclasses.replace(c, dataset="sprsound") for c in result.cycles
            if c.split in sprsound.SPLITS] == old.cycles
    later = [c for c in result.cycles if c.split not in sprsound.SPLITS]
    assert {c.dataset for c in result.cycles} == {"sprsound_releases"}
    assert "" in {c.patient for c in later}                              # anonymised
    assert {c.location for c in later if c.split == "test2024"} & {"p5", "p6", "p7", "p8"}
    for path in (root / "BioCAS2024" / "test2024_json").glob("*.json"):
        assert "record_annotation" not in json.loads(path.read_text())
    assert not {c.patient for c in later} - {""} & {c.patient for c in result.split("train")}


def test_the_newest_release_is_reported_and_the_releases_folder_is_read(root, tmp_path):
    source = sources.get("sprsound_releases")
    config = load_config("ce")
    config.data.name, config.data.root = "sprsound_releases", str(root)
    resolved = configuration.resolve(config)
    assert resolved.data.test_split == "test2024"
    assert resolved.data.classes == sprsound.CLASSES
    assert (resolved.train.epochs, resolved.loss.class_weighted) == (200, False)   # SPRSound's
    assert dict(resolved.data.fields)["location"] == tuple(f"p{k}" for k in range(1, 9))
    moved = tmp_path / "repo"
    (moved / "releases").mkdir(parents=True)
    for name in ("BioCAS2022", "BioCAS2023"):
        shutil.copytree(root / name, moved / "releases" / name)
    assert source.splits_of(moved)[-1] == "test2023"
    assert len(source.read(moved, annotations_only=True).split("test2023")) == \
        len(source.read(root, annotations_only=True).split("test2023"))


def test_a_bad_later_file_names_itself_unless_skipped(root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    bad = sorted((copy / "BioCAS2023" / "test2023_json").glob("*.json"))[0]
    bad.rename(bad.with_name("nopatient_3.0_1_p9_1.json"))
    with pytest.raises(records.DataError, match="nopatient_3.0_1_p9_1.json: file name"):
        sprsound_releases.read(copy, annotations_only=True)
    result = sprsound_releases.read(copy, annotations_only=True, skip_bad=True)
    assert [s.path.endswith("nopatient_3.0_1_p9_1.json") for s in result.skipped] == [True]


def test_inspect_counts_every_split(root):
    result = sprsound_releases.read(root)
    summary = inspect.summarize("sprsound_releases", result)
    assert list(summary["splits"]) == list(result.splits)
    for split, s in summary["splits"].items():
        cycles = result.split(split)
        assert s["cycles"] == len(cycles) == sum(s["classes"].values())
        assert s["recordings"] == len({c.stem for c in cycles})
        assert s["patients"] == len({c.patient for c in cycles} - {""})   # anonymised: not one
    assert sorted(summary["metadata"]) == ["age_group", "location", "sex"]
