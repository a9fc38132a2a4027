"""resp_jax.predict and resp_jax.finished_run: a finished run applied to new recordings."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from resp_jax import predict, finished_run
from resp_jax.data import audio, features, readers
from resp_jax.data.records import DataError
from train_helpers import ROOT

pytestmark = pytest.mark.slow  # trains tiny models or runs commands (CI runs these)


@pytest.fixture(scope="module")
def run(trained_runs):
    return finished_run.load(trained_runs["mscl"])


@pytest.fixture(scope="module")
def recording(tiny_icbhi):
    """(wav, txt) of the synthetic recording with the most cycles."""
    folder = tiny_icbhi["root"] / "ICBHI_final_database"
    txt = max(sorted(folder.glob("*.txt")), key=lambda p: len(p.read_text().splitlines()))
    return txt.with_suffix(".wav"), txt


def reference_probabilities(run, wave, spans):
    """What the run's evaluation computes for these cycles, written independently: librosa
    log-mel (float64), numpy min-max over each eval batch, the run's standardisation."""
    cfg = run.config
    n = int(round(cfg.data.duration * audio.SAMPLE_RATE))
    mean, std = run.results["norm"]
    x = np.stack([features.logmel_np(audio.fit(audio.cut(wave, a, b), n, cfg.data.pad))
                  for a, b in spans])
    out = []
    for k in range(0, len(x), cfg.eval.batch_size):
        chunk = x[k:k + cfg.eval.batch_size]
        z = ((chunk - chunk.min()) / (chunk.max() - chunk.min()) - mean) / std
        logits = run.model.apply(run.variables, z.astype(np.float32), False)["logits"]
        out.append(np.asarray(jax.nn.softmax(logits)))
    return np.concatenate(out)


def test_windows_cover_the_recording():
    assert predict.windows(20.0, 8.0, 4.0) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert predict.windows(21.0, 8.0, 4.0)[-1] == (16.0, 21.0)   # the last one is shorter
    assert predict.windows(3.0, 8.0, 2.0) == [(0, 3.0)]          # shorter than one window
    for duration, window, hop in ((30.3, 8.0, 1.7), (8.0, 8.0, 8.0), (100.0, 2.5, 0.3)):
        spans = predict.windows(duration, window, hop)
        starts = [a for a, _ in spans]
        assert np.allclose(np.diff(starts), hop) and starts[0] == 0
        assert spans[-1][1] == pytest.approx(duration)
        assert len(spans) == 1 or spans[-2][1] < duration  # no window more than needed
        assert all(b - a <= window + 1e-9 for a, b in spans)
    with pytest.raises(ValueError, match="must be > 0"):
        predict.windows(10.0, 8.0, 0.0)


def test_annotated_cycles_match_an_independent_computation(run, recording):
    wav, txt = recording
    rows = predict.predict(run, [str(wav)], [str(txt)], recompute=True)
    cycles = readers.read_annotation(txt)[1]
    wave = audio.load(wav)
    duration = len(wave) / audio.SAMPLE_RATE
    assert len(rows) == len(cycles) > run.config.eval.batch_size  # several eval batches
    for r, (start, end, label) in zip(rows, cycles):
        assert r["start"] == pytest.approx(start, abs=1e-4)
        assert r["end"] == pytest.approx(min(end, duration), abs=1e-4)
        assert r["annotated"] == run.classes[label]
        p = np.array([r["probabilities"][c] for c in run.classes])
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        assert r["predicted"] == run.classes[int(p.argmax())]
    got = np.array([[r["probabilities"][c] for c in run.classes] for r in rows])
    want = reference_probabilities(run, wave, [(r["start"], r["end"]) for r in rows])
    # TF float64 vs librosa log-mel differ by < 1e-3 dB; probabilities agree to ~1e-5.
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_the_runs_own_test_recordings_are_read_from_its_predictions_file(run, tiny_icbhi):
    """The cycles of a test recording get the probabilities the run's evaluation gave them
    (results.json's figures); classified alone they would be min-maxed in other batches."""
    from resp_jax import evaluation
    own = evaluation.read(run.workdir / evaluation.PREDICTIONS_FILE, run.dataset)
    stem = max(set(own.stem), key=lambda s: ((own.stem == s).sum(), s))
    folder = tiny_icbhi["root"] / "ICBHI_final_database"
    wav, txt = folder / f"{stem}.wav", folder / f"{stem}.txt"
    rows = predict.predict(run, [str(wav)], [str(txt)])
    mine = np.flatnonzero(own.stem == stem)
    assert len(rows) == len(mine) > 1
    for r, i in zip(rows, mine):
        assert r["start"] == round(own.start[i], 4) and r["annotated"] == run.classes[
            own.label[i]] and r["predicted"] == run.classes[own.predicted[i]]
        assert r["probabilities"] == {c: round(float(v), 6)
                                      for c, v in zip(run.classes, own.probabilities[i])}
    fresh = predict.predict(run, [str(wav)], [str(txt)], recompute=True)
    assert [r["start"] for r in fresh] == [r["start"] for r in rows]
    # Batched alone (min-max over this recording's cycles): not the evaluation's numbers.
    assert any(r["probabilities"] != f["probabilities"] for r, f in zip(rows, fresh))


def test_a_run_recorded_before_the_preparation_fields_predicts_as_it_was_prepared(
        trained_runs, recording, tmp_path, monkeypatch):
    """A config.json without data.resampler / data.fade is a run prepared with soxr and
    per-cycle fades: finished_run fills those in, and predict resamples and cuts with them."""
    old = tmp_path / "old"
    shutil.copytree(trained_runs["mscl"], old)
    config = json.loads((old / "config.json").read_text())
    del config["data"]["resampler"], config["data"]["fade"]
    (old / "config.json").write_text(json.dumps(config))
    run = finished_run.load(old)
    assert (run.config.data.resampler, run.config.data.fade) == ("soxr", "cycle")
    wav, txt = recording
    seen = []
    for name in ("load_any", "cycles"):
        real = getattr(audio, name)
        monkeypatch.setattr(audio, name, lambda *a, real=real, name=name, **kw: (
            seen.append((name, a[2:], kw)), real(*a, **kw))[1])
    rows = predict.predict(run, [str(wav)], [str(txt)], recompute=True)
    assert seen == [("load_any", (), {"resampler": "soxr"}),
                    ("cycles", ("cycle", audio.SAMPLE_RATE, audio.FADE), {})]
    got = np.array([[r["probabilities"][c] for c in run.classes] for r in rows])
    want = reference_probabilities(run, audio.load(wav, resampler="soxr"),
                                   [(r["start"], r["end"]) for r in rows])
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_sliding_windows_and_any_soundfile_format(run, recording, tmp_path):
    wav, _ = recording
    wave, rate = sf.read(wav, dtype="float32")
    rows = predict.predict(run, [str(wav)], window=1.0, hop=0.5)
    duration = len(audio.load(wav)) / audio.SAMPLE_RATE
    spans = predict.windows(duration, 1.0, 0.5)
    assert [(r["start"], r["end"]) for r in rows] == [(round(a, 4), round(b, 4))
                                                        for a, b in spans]
    assert "annotated" not in rows[0]
    # The same audio as a stereo 32-bit float WAV (identical channels): identical results.
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([wave, wave], axis=1), rate, subtype="FLOAT")
    again = predict.predict(run, [str(stereo)], window=1.0, hop=0.5)
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in again],
                               [list(r["probabilities"].values()) for r in rows], atol=1e-5)
    # FLAC, 24 bit, another sample rate: read, resampled, classified.
    flac = tmp_path / "other.flac"
    sf.write(flac, wave[::2], rate // 2, subtype="PCM_24")
    other = predict.predict(run, [str(flac)], window=1.0, hop=0.5)
    assert len(other) == len(predict.windows(len(wave[::2]) / (rate // 2), 1.0, 0.5))


def test_sprsound_annotations_and_cycles_past_the_end(run, recording, tmp_path, caplog):
    wav, _ = recording
    duration = len(audio.load(wav)) / audio.SAMPLE_RATE
    events = tmp_path / "events.json"
    events.write_text(json.dumps({"record_annotation": "CAS", "event_annotation": [
        {"start": "1500", "end": "2600", "type": "Wheeze"},
        {"start": "200", "end": "1200", "type": "Normal"},
        {"start": "3000", "end": "2900", "type": "Stridor"},            # end <= start: dropped
        {"start": str(int(duration * 1000) + 500), "end": str(int(duration * 1000) + 900),
         "type": "Rhonchi"}]}))                                        # past the end
    rows = predict.predict(run, [str(wav)], [str(events)])
    assert [(r["start"], r["end"], r["annotated"]) for r in rows] == [
        (0.2, 1.2, "Normal"), (1.5, 2.6, "Wheeze")]
    assert "end <= start" in caplog.text
    assert "1 annotated cycle(s) start after the end" in caplog.text
    assert predict.summary(rows, run) is None  # SPRSound classes: no ICBHI score


def test_bad_inputs_name_the_file(run, recording, tmp_path):
    wav, txt = recording
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    with pytest.raises(DataError, match=f"{junk}: unreadable audio"):
        predict.predict(run, [str(junk)])
    with pytest.raises(DataError, match="file not found"):
        predict.predict(run, [str(tmp_path / "missing.wav")])
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(DataError, match=f"{empty}: empty file"):
        predict.predict(run, [str(empty)])
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, np.float32), 8000)
    with pytest.raises(DataError, match=f"{no_samples}: audio file without samples"):
        predict.predict(run, [str(no_samples)])
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1\t1.2\t0\t0\n0.5\tx\t0\t1\n")
    with pytest.raises(DataError, match=f"{bad}:2: malformed cycle line"):
        predict.predict(run, [str(wav)], [str(bad)])
    with pytest.raises(DataError, match="unknown annotation format"):
        predict.predict(run, [str(wav)], [str(tmp_path / "a.csv")])
    with pytest.raises(ValueError, match="2 --wav but 1 --annotations"):
        predict.predict(run, [str(wav), str(wav)], [str(txt)])


def test_window_options_that_would_mislead_are_errors(run, recording):
    """A window longer than the run's clips would be cut to its first data.duration seconds
    (audio.fit), and --window/--hop mean nothing beside annotated cycles: both refused."""
    wav, txt = recording
    clip = run.config.data.duration
    assert len(predict.predict(run, [str(wav)], window=clip, hop=clip)) >= 1
    with pytest.raises(ValueError, match=f"--window={2 * clip:g} s is longer than the "
                                         f"{clip:g} s clips"):
        predict.predict(run, [str(wav)], window=2 * clip)
    with pytest.raises(ValueError, match="with --annotations the annotated cycles"):
        predict.predict(run, [str(wav)], [str(txt)], hop=1.0)


def test_summary_says_n_a_for_a_rate_without_cycles(run):
    rows = [{"annotated": "normal", "predicted": p} for p in ("normal", "normal", "crackle")]
    assert predict.summary(rows, run) == ("3 annotated cycles (3 normal, 0 abnormal): "
                                          "Sp 66.67  Se n/a  Score n/a")
    rows += [{"annotated": "wheeze", "predicted": "wheeze"}]
    assert predict.summary(rows, run).endswith("(3 normal, 1 abnormal): Sp 66.67  Se 100.00  "
                                               "Score 83.33")


def test_unfinished_run_is_a_clear_error(trained_runs, tmp_path):
    shutil.copy(trained_runs["mscl"] / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="results.json not found.*not a finished"):
        finished_run.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        finished_run.load(tmp_path / "nothing")


def test_command_line_prints_json_lines_and_writes_csv(trained_runs, recording, tmp_path):
    wav, txt = recording
    out = tmp_path / "p.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "resp_jax.predict", f"--workdir={trained_runs['mscl']}",
         f"--wav={wav}", f"--annotations={txt}", f"--csv={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(lines) == len(readers.read_annotation(txt)[1])
    assert set(lines[0]) == {"wav", "index", "start", "end", "predicted", "probabilities",
                             "annotated"}
    assert re.search(r"annotated cycles \(\d+ normal, \d+ abnormal\): Sp", done.stderr)
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["predicted"] for r in table] == [x["predicted"] for x in lines]
    assert list(table[0])[-4:] == ["p_normal", "p_crackle", "p_wheeze", "p_both"]
    assert float(table[0]["p_crackle"]) == lines[0]["probabilities"]["crackle"]
    done = subprocess.run(
        [sys.executable, "-m", "resp_jax.predict", f"--workdir={trained_runs['mscl']}",
         f"--wav={tmp_path / 'nope.wav'}"], env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2 and "nope.wav: file not found" in done.stderr
    assert "Traceback" not in done.stderr
    # An unwritable --csv is refused before any work, in one line naming it.
    bad_csv = tmp_path / "no_such_folder" / "p.csv"
    done = subprocess.run(
        [sys.executable, "-m", "resp_jax.predict", f"--workdir={trained_runs['mscl']}",
         f"--wav={wav}", f"--csv={bad_csv}"], env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert f"error: --csv={bad_csv}: folder {bad_csv.parent} not found" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(ValueError, match=f"--csv={tmp_path}: cannot write it"):
        predict.write_csv(str(tmp_path), lines, ("normal",))


def test_new_recordings_are_standardised_with_the_runs_constants(run):
    """A run that standardised with its dataset's statistics recorded them in results.json;
    inference uses them as fixed constants (new recordings have no training split)."""
    import dataclasses
    config = run.config.copy_and_resolve_references()
    config.data.norm = "dataset"
    other = dataclasses.replace(run, config=config, results={**run.results, "norm": [0.4, 0.03]})
    got = other.inference_config()
    assert (got.data.norm, got.data.norm_mean, got.data.norm_std) == ("reference", 0.4, 0.03)
    assert run.config.data.norm == "reference"  # the loaded run is untouched
    old = dataclasses.replace(other, results={k: v for k, v in run.results.items()
                                              if k != "norm"})
    with pytest.raises(ValueError, match="has no 'norm' entry"):
        old.inference_config()
