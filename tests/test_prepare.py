"""Prepared datasets (TFDS): cycles as the readers and `audio` define them, cache reuse and
invalidation, removal of a root's older copies, bad audio, skipped items surviving the cache."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from resp_jax.data import (audio, icbhi, metadata, prepare, prepared_copies, readers, records,
                           synthetic)
from resp_jax.data.records import DataError


@pytest.fixture(scope="module")
def icbhi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("icbhi") / "root"
    synthetic.write_icbhi(root, recordings=4, seed=0)
    return root


@pytest.fixture
def fresh_root(icbhi_root, tmp_path):
    """A private copy of the synthetic dataset that a test may damage."""
    root = tmp_path / "root"
    shutil.copytree(icbhi_root, root)
    return root


def _wavs(root):
    return sorted(root.rglob("*.wav"))


def _forbid(monkeypatch, *names):
    def fail(*args, **kwargs):
        raise AssertionError("a cached load must not read or decode the distributed files")
    for module, name in names:
        monkeypatch.setattr(module, name, fail)


def _assert_same(a, b):
    assert a.dataset == b.dataset and a.skipped == b.skipped
    assert a.splits.keys() == b.splits.keys()
    for s in a.splits:
        x, y = a[s], b[s]
        assert x.stem == y.stem and x.patient == y.patient
        np.testing.assert_array_equal(x.index, y.index)
        np.testing.assert_array_equal(x.start, y.start)
        np.testing.assert_array_equal(x.end, y.end)
        for f in metadata.BASE_FIELDS:
            np.testing.assert_array_equal(x.codes[f], y.codes[f])
        assert len(x.audio) == len(y.audio)
        for u, v in zip(x.audio, y.audio):
            np.testing.assert_array_equal(u, v)


def test_prepared_cycles_are_cut_from_16k_recordings(icbhi_root, tmp_path):
    p = prepare.load("icbhi", icbhi_root, data_dir=tmp_path / "tfds")
    result = readers.read("icbhi", icbhi_root)
    assert p.skipped == [] and set(p.splits) == set(icbhi.SPLITS)
    assert sum(len(s) for s in p.splits.values()) == len(result.cycles) > 0
    decoded = {}
    for split in icbhi.SPLITS:
        cycles, s = result.split(split), p[split]
        assert len(s) == len(cycles)
        assert s.stem == [c.stem for c in cycles] and s.patient == [c.patient for c in cycles]
        np.testing.assert_array_equal(s.index, [c.index for c in cycles])
        # start and end as the reader gave them, every digit (a run's predictions.csv)
        assert s.start.tolist() == [c.start for c in cycles]
        assert s.end.tolist() == [c.end for c in cycles]
        for f in metadata.BASE_FIELDS:
            assert s.codes[f].dtype == np.int32
            np.testing.assert_array_equal(
                s.codes[f], [metadata.encode_base("icbhi", f, getattr(c, f)) for c in cycles])
        for c, wave in zip(cycles, s.audio):
            if c.wav_path not in decoded:
                decoded[c.wav_path] = audio.load(c.wav_path)
            assert wave.dtype == np.float32
            np.testing.assert_array_equal(wave, audio.cut(decoded[c.wav_path], c.start, c.end))


def test_second_load_reads_the_cache(icbhi_root, tmp_path, monkeypatch):
    first = prepare.load("icbhi", icbhi_root, data_dir=tmp_path / "tfds")
    _forbid(monkeypatch, (audio, "load"), (readers, "read"), (sf, "read"))
    _assert_same(first, prepare.load("icbhi", icbhi_root, data_dir=tmp_path / "tfds"))


def test_cache_inside_the_data_root_is_reused(fresh_root, monkeypatch):
    first = prepare.load("icbhi", fresh_root, data_dir=fresh_root / "cache")
    _forbid(monkeypatch, (audio, "load"), (readers, "read"))
    _assert_same(first, prepare.load("icbhi", fresh_root, data_dir=fresh_root / "cache"))


def test_changed_file_invalidates_the_cache(fresh_root, tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    first = prepare.load("icbhi", fresh_root, data_dir=data_dir)
    key = prepared_copies.fingerprint("icbhi", fresh_root)
    wav = _wavs(fresh_root)[0]
    info = sf.info(wav)
    quieter = sf.read(wav, dtype="float64")[0] * 0.5
    sf.write(wav, np.concatenate([quieter, quieter[:100]]), info.samplerate,
             subtype=info.subtype)
    assert prepared_copies.fingerprint("icbhi", fresh_root) != key
    calls = []
    real_load = audio.load
    monkeypatch.setattr(audio, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    second = prepare.load("icbhi", fresh_root, data_dir=data_dir)
    assert calls, "a changed file must be decoded again"
    split = next(s for s in second.splits if wav.stem in second[s].stem)
    i = second[split].stem.index(wav.stem)
    assert not np.array_equal(first[split].audio[i], second[split].audio[i])
    # Adding a file changes the key too.
    key = prepared_copies.fingerprint("icbhi", fresh_root)
    (fresh_root / "notes.txt").write_text("x")
    assert prepared_copies.fingerprint("icbhi", fresh_root) != key


def test_bad_audio_is_named_or_skipped_and_counted(fresh_root, tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    bad = _wavs(fresh_root)[1]
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 3])          # truncated copy
    with pytest.raises(DataError) as err:
        prepare.load("icbhi", fresh_root, data_dir=data_dir)
    assert bad.name in str(err.value)

    p = prepare.load("icbhi", fresh_root, data_dir=data_dir, skip_bad=True)
    assert p.skipped and all(isinstance(s, records.Skipped) for s in p.skipped)
    assert any(bad.name in s.path for s in p.skipped)
    assert all(bad.stem not in p[s].stem for s in p.splits)
    assert sum(len(s) for s in p.splits.values()) > 0

    # The skipped items survive the cache; a run that does not skip still gets the error.
    _forbid(monkeypatch, (audio, "load"), (readers, "read"))
    again = prepare.load("icbhi", fresh_root, data_dir=data_dir, skip_bad=True)
    assert again.skipped == p.skipped
    with pytest.raises(DataError) as err:
        prepare.load("icbhi", fresh_root, data_dir=data_dir)
    assert bad.name in str(err.value) and "skip_bad" in str(err.value)


def test_recording_failing_to_decode_is_skipped_with_its_cycles(icbhi_root, tmp_path,
                                                                monkeypatch):
    """A file whose header passes the readers' checks but whose decoding fails."""
    bad = _wavs(icbhi_root)[2]
    real_load = audio.load

    def load(path, *a, **k):
        if os.fspath(path) == str(bad):
            raise DataError(path, "corrupt sample data; expected a PCM WAV recording")
        return real_load(path, *a, **k)

    monkeypatch.setattr(audio, "load", load)
    with pytest.raises(DataError, match=bad.name):
        prepare.load("icbhi", icbhi_root, data_dir=tmp_path / "tfds")
    p = prepare.load("icbhi", icbhi_root, data_dir=tmp_path / "tfds", skip_bad=True)
    n_bad = sum(c.wav_path == str(bad) for c in readers.read("icbhi", icbhi_root).cycles)
    assert [s.path for s in p.skipped] == [str(bad)]
    assert f"{n_bad} cycle(s)" in p.skipped[0].reason
    total = sum(len(s) for s in p.splits.values())
    assert total == len(readers.read("icbhi", icbhi_root).cycles) - n_bad


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        prepare.load("icbhi", tmp_path / "nowhere", data_dir=tmp_path / "tfds")


def test_sprsound_builder(tmp_path):
    root = tmp_path / "spr"
    synthetic.write_sprsound(root, recordings=6, seed=0)
    p = prepare.load("sprsound", root, data_dir=tmp_path / "tfds")
    result = readers.read("sprsound", root)
    assert set(p.splits) == {"train", "inter_test", "intra_test"}
    for split in p.splits:
        cycles = result.split(split)
        assert p[split].stem == [c.stem for c in cycles]
        np.testing.assert_array_equal(p[split].label, [c.label for c in cycles])
    assert sum(len(s) for s in p.splits.values()) == len(result.cycles) > 0


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    b = prepare.builder("icbhi", tmp_path)
    assert str(b.data_dir).startswith(str(tmp_path / ".cache" / "resp_jax" / "tfds") + "/")


def _copies_of(data_dir, root):
    return [c for c in prepared_copies.copies(data_dir) if c.root == str(root.resolve())]


def test_a_new_copy_removes_the_older_copies_of_its_root_only(icbhi_root, fresh_root, tmp_path,
                                                               caplog):
    data_dir = tmp_path / "tfds"
    (fresh_root / "readme.txt").write_text("unlike icbhi_root, so not the same copy")
    prepare.load("icbhi", icbhi_root, data_dir=data_dir)
    prepare.load("icbhi", fresh_root, data_dir=data_dir)
    (old,) = _copies_of(data_dir, fresh_root)
    (other,) = _copies_of(data_dir, icbhi_root)
    (fresh_root / "notes.txt").write_text("a new file: a new key")
    with caplog.at_level(logging.INFO, logger="absl"):
        prepare.load("icbhi", fresh_root, data_dir=data_dir)
    (new,) = _copies_of(data_dir, fresh_root)
    assert new.path != old.path and not old.path.exists() and not old.path.parent.exists()
    assert _copies_of(data_dir, icbhi_root) == [other]     # another root's copy stays
    assert any(str(old.path) in r.getMessage() and prepared_copies.human(old.size)
               in r.getMessage() for r in caplog.records)


def test_clean_command_lists_then_removes_stale_copies(icbhi_root, fresh_root, tmp_path):
    data_dir = tmp_path / "tfds"
    (fresh_root / "readme.txt").write_text("unlike icbhi_root, so not the same copy")
    prepare.load("icbhi", icbhi_root, data_dir=data_dir)
    prepare.load("icbhi", fresh_root, data_dir=data_dir)
    (stale,) = _copies_of(data_dir, fresh_root)
    (current,) = _copies_of(data_dir, icbhi_root)
    (fresh_root / "notes.txt").write_text("changed since it was prepared")
    cmd = [sys.executable, "-m", "resp_jax.data.prepare", "--clean", f"--data_dir={data_dir}"]
    dry = subprocess.run(cmd + ["--dry_run"], capture_output=True, text=True, check=True)
    assert f"stale {stale.path}" in dry.stdout and f"keep    {current.path}" in dry.stdout
    assert "1 stale prepared copies" in dry.stdout and stale.path.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"removed {stale.path}" in done.stdout and not stale.path.exists()
    assert prepared_copies.copies(data_dir) == [current]
    # A copy whose root is gone cannot be checked: it is listed and kept.
    shutil.rmtree(fresh_root)
    prepare.load("icbhi", icbhi_root, data_dir=data_dir)
    assert prepared_copies.clean(data_dir, out=lambda line: None) == []


def test_each_audio_preparation_is_a_copy_of_its_own(icbhi_root, tmp_path):
    """data.resampler and data.fade are part of the key: another preparation of a root is
    prepared beside the first (neither removes the other), as `audio` defines it; a copy made
    before copies recorded their preparation is stale."""
    data_dir = tmp_path / "tfds"
    first = prepare.load("icbhi", icbhi_root, data_dir=data_dir)    # torchaudio, cycle fades
    other = prepare.load("icbhi", icbhi_root, data_dir=data_dir, resampler="soxr",
                         fade="recording")
    copies = _copies_of(data_dir, icbhi_root)
    assert sorted(c.preparation for c in copies) == ["soxr/recording", "torchaudio/cycle"]
    _assert_same(first, prepare.load("icbhi", icbhi_root, data_dir=data_dir))  # still cached
    assert prepared_copies.stale(data_dir)[0] == []
    cycles = readers.read("icbhi", icbhi_root).split("train")
    stem = cycles[0].wav_path
    mine = [c for c in cycles if c.wav_path == stem]
    want = audio.cycles(audio.load(stem, resampler="soxr"), [(c.start, c.end) for c in mine],
                        "recording")
    for got, w in zip(other["train"].audio, want):
        np.testing.assert_array_equal(got, w)
    meta = next(c for c in copies if c.preparation == "soxr/recording").path / "metadata.json"
    recorded = json.loads(meta.read_text())
    del recorded["audio"]
    meta.write_text(json.dumps(recorded))
    (old,) = prepared_copies.stale(data_dir)[0]
    assert old.preparation is None and old.path == meta.parent
