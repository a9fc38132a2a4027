"""`python -m resp_jax.data.inspect`: the summary's last line is one JSON object in the
format of issue 2, reproducing docs/method.md §1.1 on the real ICBHI annotation files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resp_jax.data import inspect, readers, sprsound, synthetic

REPO = Path(__file__).resolve().parents[1]


def run_inspect(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "resp_jax.data.inspect", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_real_icbhi_counts_match_spec(icbhi_real):
    run = run_inspect("--dataset=icbhi", f"--data_dir={icbhi_real}", "--annotations_only")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) > 1                    # a human-readable summary comes first
    summary = json.loads(lines[-1])
    assert summary["dataset"] == "icbhi"
    expected = {"train": (4142, 539, {"normal": 2063, "crackle": 1215, "wheeze": 501,
                                      "both": 363}),
                "test": (2756, 381, {"normal": 1579, "crackle": 649, "wheeze": 385,
                                     "both": 143})}
    assert list(summary["splits"]) == ["train", "test"]
    for split, (cycles, recordings, classes) in expected.items():
        s = summary["splits"][split]
        assert (s["cycles"], s["recordings"], s["classes"]) == (cycles, recordings, classes)
        assert list(s["classes"]) == ["normal", "crackle", "wheeze", "both"]
        assert s["patients"] > 0
    assert sorted(summary["metadata"]) == ["age_group", "device", "sex"]
    assert sum(summary["metadata"]["sex"].values()) == 6898
    assert summary["metadata"]["sex"]["unknown"] > 0       # patient 223
    assert sorted(summary["metadata"]["device"]) == ["AKGC417L", "Litt3200", "LittC2SE",
                                                      "Meditron"]
    assert summary["skipped"] == []
    assert "126 patients" in lines[0]


def test_sprsound_summary_format(tmp_path):
    root = synthetic.write_sprsound(tmp_path / "spr", recordings=9, seed=2)
    result = readers.read("sprsound", root)
    summary = inspect.summarize("sprsound", result)
    assert list(summary["splits"]) == ["train", "inter_test", "intra_test"]
    for split, s in summary["splits"].items():
        cycles = result.split(split)
        assert list(s["classes"]) == list(sprsound.CLASSES)
        assert sum(s["classes"].values()) == s["cycles"] == len(cycles)
        assert s["recordings"] == len({c.stem for c in cycles})
        assert s["patients"] == len({c.patient for c in cycles})
    assert sorted(summary["metadata"]) == ["age_group", "location", "sex"]
    assert sum(summary["metadata"]["location"].values()) == len(result.cycles)
    json.dumps(summary)   # serialisable as is


def test_bad_input_fails_naming_the_file_unless_skipped(tmp_path):
    root = synthetic.write_sprsound(tmp_path / "spr", recordings=6, seed=2)
    bad = sorted((root / "train_json").glob("*.json"))[0]
    bad.write_text('{"record_annotation": "Normal"}')
    run = run_inspect("--dataset=sprsound", f"--data_dir={root}")
    assert run.returncode == 1
    assert str(bad) in run.stderr and "event_annotation" in run.stderr
    run = run_inspect("--dataset=sprsound", f"--data_dir={root}", "--skip_bad")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert [s["path"] for s in summary["skipped"]] == [str(bad)]
    assert "skipped: 1" in run.stdout


@pytest.mark.parametrize("args,missing", [(["--dataset=icbhi"], "--data_dir"),
                                          (["--data_dir=/tmp"], "--dataset")])
def test_required_flags(args, missing):
    run = run_inspect(*args)
    assert run.returncode != 0
    assert f"{missing} must have a value" in run.stderr
