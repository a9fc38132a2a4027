"""Command line: classify the breathing cycles of new recordings with a trained run.

    python -m resp_jax.predict --workdir=DIR --wav=FILE [--annotations=FILE] [--csv=OUT]
    python -m resp_jax.predict --workdir=DIR --wav=FILE [--window=8] [--hop=4] [--csv=OUT]

With ``--annotations`` (an ICBHI ``.txt`` cycle file, a SPRSound ``.json`` event file, an
HF_Lung ``_label.txt`` file: `sources.by_annotation`) each annotated cycle is classified,
and its annotated class is printed beside the prediction;
without, the recording is cut into windows of ``--window`` seconds (default and most: the
run's ``data.duration``, the clip length the model sees) every ``--hop`` seconds (default:
half a window), the last one ending at the end of the recording.
Several recordings: repeat ``--wav`` (and ``--annotations``, in the same order).
A BTS run (method 'bts') also reads each cycle's metadata: ``--metadata=field=value``
(repeated: ``--metadata=sex=F --metadata=device=Meditron``, the values as the run's
config.json lists them under data.fields) for every recording given; a field not given is
unknown, and its sentence says so (docs/method.md §14).

The annotated cycles of one of the run's own test recordings (same stem, cycle starts, ends
and classes) are not classified again: their predictions are read from the run's
``predictions.csv``, the evaluation that ``results.json`` and ``report`` show (classified
alone, a recording's cycles are min-maxed in other batches than in the run's evaluation, which
can move a probability). ``--recompute`` classifies them anyway.

Prints one JSON object per cycle or window (wav, index, start, end, predicted, probabilities,
annotated) on stdout, and with ``--csv`` writes the same as CSV. Any format, sample rate, bit
depth or channel count that soundfile reads is accepted (channels are averaged, audio is
resampled to the run's ``data.sample_rate`` with its ``data.resampler`` and cut with its
``data.fade``); cycles are preprocessed as the run's evaluation preprocessed them
(`resp_jax.finished_run`), including the batch min-max over up to ``eval.batch_size`` cycles.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS



def windows(duration: float, window: float, hop: float) -> list:
    """(start, end) of windows of ``window`` s every ``hop`` s over ``duration`` s: as many
    as needed for the last to reach the end (it may be shorter than ``window``; a recording
    shorter than one window gives one window over all of it)."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window ({window}) and hop ({hop}) must be > 0 seconds")
    count = 1 + max(0, math.ceil(round((duration - window) / hop, 9)))
    return [(k * hop, min(k * hop + window, duration)) for k in range(count)]


def segments(wav: str, annotations: str | None, window: float, hop: float,
             classes=(), sample_rate: int = 16000, resampler: str | None = None) -> tuple:
    """``(wave at sample_rate, rows)`` of one recording (resampled with ``resampler``,
    default `audio.RESAMPLER`): a row per cycle or window, with its start, end and
    (annotations) annotated class name and its index in ``classes`` (the run's; -1 when not
    among them); cycles starting past the end of the audio are left out with a warning that
    names them."""
    from resp_jax.data import audio, readers, wav_checks

    wave = audio.load_any(wav, sample_rate, resampler=resampler or audio.RESAMPLER)
    duration = len(wave) / sample_rate
    if annotations is None:
        return wave, [{"start": a, "end": b} for a, b in windows(duration, window, hop)]
    source, cycles, dropped = readers.read_annotation(annotations)
    for d in dropped:
        logging.warning("%s: %s (left out)", d.path, d.reason)
    rows, past = [], []
    for k, (start, end, label) in enumerate(cycles):
        clamped = wav_checks.clamp_to_audio(start, end, duration)
        if clamped is None:
            past.append(k)
            continue
        name = source.classes[label]   # the annotation format's class
        rows.append({"start": clamped[0], "end": clamped[1], "annotated": name,
                     "label": classes.index(name) if name in classes else -1})
    if past:
        logging.warning("%s: %d annotated cycle(s) start after the end of %s (%.2f s) and are "
                        "left out: cycles %s (0-based, in file order)", annotations, len(past),
                        wav, duration, past)
    if not rows:
        raise ValueError(f"{annotations}: no annotated cycle lies within {wav}")
    return wave, rows


def from_run(predictions, wav: str, rows: list):
    """``[n, C]`` probabilities and ``[n]`` predicted classes of ``rows`` (the annotated
    cycles of ``wav``) as the run's own evaluation gave them (its predictions.csv), when
    ``wav`` is one of its test recordings and every row one of its cycles (same recording
    stem, start and class, an end within 10 ms: ends are clamped to the audio); else None."""
    if predictions is None or not rows or "annotated" not in rows[0]:
        return None
    stem = os.path.splitext(os.path.basename(wav))[0]
    where = {float(a): i for i, (s, a) in enumerate(zip(predictions.stem, predictions.start))
             if s == stem}
    found = [where.get(float(r["start"])) for r in rows]
    if None in found or any(predictions.label[i] != r.get("label", -1)
                            or abs(predictions.end[i] - r["end"]) > 0.01
                            for i, r in zip(found, rows)):
        return None
    return predictions.probabilities[found], predictions.predicted[found]


def metadata_codes(run, pairs) -> dict:
    """``--metadata`` ('field=value' strings) as base-field codes of the run's schema; only
    a BTS run reads them."""
    from resp_jax.data import metadata

    pairs = list(pairs or ())
    if pairs and run.config.method != "bts":
        raise ValueError(f"--metadata: this run (method {run.config.method!r}) does not read "
                         "metadata; only BTS runs (method 'bts') do")
    codes = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or field not in run.schema.fields[1:]:
            raise ValueError(f"--metadata={pair}: expected FIELD=VALUE with FIELD one of "
                             f"{list(run.schema.fields[1:])}")
        codes[field] = metadata.encode_base(run.schema, field, value)
    if run.config.method == "bts":
        unknown = [f for f in run.config.bts.fields if f not in codes]
        if unknown:
            logging.warning("BTS run: %s unknown for these recordings (--metadata); their "
                            "sentence says so", ", ".join(unknown))
    return codes


def predict(run, wavs: list, annotations: list | None = None, window: float | None = None,
            hop: float | None = None, recompute: bool = False, meta=None) -> list:
    """One dict per cycle or window of every recording (see the module docstring); ``meta``:
    ``--metadata`` ('field=value', a BTS run's)."""
    from resp_jax import evaluation
    from resp_jax.data import audio

    if annotations and len(annotations) != len(wavs):
        raise ValueError(f"{len(wavs)} --wav but {len(annotations)} --annotations; give one "
                         "annotation file per recording, in the same order, or none")
    if annotations and (window or hop):
        raise ValueError("--window and --hop cut sliding windows; with --annotations the "
                         "annotated cycles are classified instead: give one or the other")
    clip = float(run.config.data.duration)
    window = float(window or clip)
    if window > clip + 1e-9:
        # fit() keeps the first data.duration seconds: the rest of the window is never seen.
        raise ValueError(f"--window={window:g} s is longer than the {clip:g} s clips this "
                         f"run was trained on (data.duration); the model would see only the "
                         f"first {clip:g} s of each window: use --window <= {clip:g}")
    hop = float(hop or window / 2)
    codes = metadata_codes(run, meta)
    path = run.workdir / evaluation.PREDICTIONS_FILE
    own = None if recompute or not path.is_file() else evaluation.read(path, run.dataset)
    out = []
    for i, wav in enumerate(wavs):
        sr = int(run.config.data.sample_rate)  # the run's (48 kHz for CLAP's front end)
        wave, rows = segments(wav, annotations[i] if annotations else None, window, hop,
                              run.classes, sr, run.config.data.resampler)
        found = from_run(own, wav, rows)
        if found is not None:
            logging.info("%s: one of the run's test recordings; its %d cycles' predictions "
                         "are the run's own (%s; --recompute classifies them anew)", wav,
                         len(rows), path)
            probabilities, predicted = found
        else:  # cut as the run's data were prepared (data.fade)
            cuts = audio.cycles(wave, [(r["start"], r["end"]) for r in rows],
                                run.config.data.fade, sr, audio.fade_length(sr))
            probabilities = run.classify_waves(cuts, [r.get("label", -1) for r in rows],
                                               source=str(wav), codes=codes)["probabilities"]
            predicted = probabilities.argmax(axis=-1)
        for k, (row, p, choice) in enumerate(zip(rows, probabilities, predicted)):
            record = {"wav": wav, "index": k, "start": round(row["start"], 4),
                      "end": round(row["end"], 4),
                      "predicted": run.classes[int(choice)],
                      "probabilities": {c: round(float(v), 6) for c, v in zip(run.classes, p)}}
            if "annotated" in row:
                record["annotated"] = row["annotated"]
            out.append(record)
    return out


def check_writable(path: str) -> None:
    """Fails before any work when ``--csv`` cannot be written (a missing folder, a directory)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--csv={path} is a directory; expected a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"--csv={path}: folder {folder} not found")


def write_csv(path: str, records: list, classes) -> None:
    """The rows of ``records`` as CSV; ValueError naming ``path`` when it cannot be written."""
    annotated = any("annotated" in r for r in records)
    columns = (["wav", "index", "start", "end", "predicted"] + (["annotated"] if annotated else [])
               + [f"p_{c}" for c in classes])
    try:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in records:
                row = [r["wav"], r["index"], r["start"], r["end"], r["predicted"]]
                row += [r.get("annotated", "")] if annotated else []
                writer.writerow(row + [r["probabilities"][c] for c in classes])
    except OSError as e:
        raise ValueError(f"--csv={path}: cannot write it ({e.strerror or e})") from None


def summary(records: list, run) -> str | None:
    """Sp / Se / Score over annotated cycles whose classes are the run's (else None). A rate
    without cycles to count (no normal, or no abnormal cycle) is 'n/a', not the 0 of
    `metrics.scores`, so a recording of normal cycles does not read as Se 0."""
    from resp_jax import metrics

    index = {c: i for i, c in enumerate(run.classes)}
    pairs = [(index[r["annotated"]], index[r["predicted"]]) for r in records
             if r.get("annotated") in index]
    if not pairs or len(pairs) != len(records):
        return None
    s = metrics.summarize([a for a, _ in pairs], [b for _, b in pairs], dataset=run.dataset,
                          num_classes=len(run.classes))
    normal = sum(a == 0 for a, _ in pairs)
    abnormal = len(pairs) - normal
    sp = f"{s['sp']:.2f}" if normal else "n/a"
    se = f"{s['se']:.2f}" if abnormal else "n/a"
    score = f"{s['score']:.2f}" if normal and abnormal else "n/a"
    return (f"{len(pairs)} annotated cycles ({normal} normal, {abnormal} abnormal): "
            f"Sp {sp}  Se {se}  Score {score}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resp_jax import finished_run
    from resp_jax.data.records import DataError

    try:
        if FLAGS.csv:
            check_writable(FLAGS.csv)
        run = finished_run.load(FLAGS.workdir)
        records = predict(run, FLAGS.wav, FLAGS.annotations, FLAGS.window, FLAGS.hop,
                          FLAGS.recompute, FLAGS.metadata)
        if FLAGS.csv:
            write_csv(FLAGS.csv, records, run.classes)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in records:
        print(json.dumps(r), flush=True)
    if FLAGS.csv:
        logging.info("wrote %d rows to %s", len(records), FLAGS.csv)
    line = summary(records, run)
    if line:
        print(line, file=sys.stderr)
    return 0


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so the modules import together)."""
    flags.DEFINE_string("workdir", None, "A finished run (resp_jax.main --workdir).")
    flags.DEFINE_multi_string("wav", None, "Recording(s) to classify (repeat the flag).")
    flags.DEFINE_multi_string(
        "annotations", None, "Cycle annotations per --wav, in the same order: ICBHI .txt, "
        "SPRSound .json or HF_Lung _label.txt. Without them, sliding windows are classified.")
    flags.DEFINE_float("window", None, "Window length in seconds (no annotations); "
                       "default: the run's data.duration.", lower_bound=0.1)
    flags.DEFINE_float("hop", None, "Seconds between window starts (no annotations); "
                       "default: half the window.", lower_bound=0.01)
    flags.DEFINE_string("csv", None, "Also write the predictions to this CSV file.")
    flags.DEFINE_bool("recompute", False, "Classify the annotated cycles of the run's own test "
                      "recordings anew instead of reading them from its predictions.csv.")
    flags.DEFINE_multi_string(
        "metadata", None, "BTS runs: FIELD=VALUE of the recordings' metadata (repeat the "
        "flag: sex=F, age_group=adult, location=Tc, device=Meditron); others unknown.")
    flags.mark_flags_as_required(["workdir", "wav"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
