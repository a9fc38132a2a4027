"""The checks every reader shares: `Problems` turns bad input into a `DataError` or (when
asked to skip) a listed `Skipped` item, so nothing is dropped silently; `wav_info` checks a
recording from its header alone (no decoding) and returns its duration and sample rate;
`sound_info` does the same for any format soundfile reads (a manifest's recordings);
`clamp_to_audio` fits an annotated segment to the audio, `fit_to_recording` every unit of
one recording."""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Optional

import soundfile as sf

from resp_jax.data import records

EXPECTED_WAV = "a PCM WAV recording"
ANY_AUDIO = "a sound file that libsndfile reads (WAV, FLAC, OGG, AIFF, ...)"
_WAV_FORMATS = ("WAV", "WAVEX", "RF64")


class Problems:
    """Collects bad input: raises at once by default, records and continues with ``skip_bad``."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped: list = []

    def bad(self, path, reason: str, line: Optional[int] = None) -> None:
        """Reports one bad item; returns only when it may be skipped."""
        if not self.skip_bad:
            raise records.DataError(path, reason, line)
        self.skipped.append(records.Skipped(str(path), reason, line))

    def error(self, err: records.DataError, what: str = "") -> None:
        """Reports an already raised `DataError`, optionally saying what is skipped with it."""
        if not self.skip_bad:
            raise err
        reason = f"{err.reason} ({what})" if what else err.reason
        self.skipped.append(records.Skipped(err.path, reason, err.line))


@dataclasses.dataclass(frozen=True)
class WavInfo:
    duration: float   # seconds
    samplerate: int
    channels: int
    subtype: str      # e.g. 'PCM_16'


def _check_riff(path: str, size: int) -> None:
    """Fails when the header is not RIFF/WAVE or the data chunk runs past the end of the file.

    libsndfile quietly shortens a truncated file, so a half-copied recording would otherwise
    pass with a shorter duration.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            raise records.DataError(
                path, f"not a WAV file (no RIFF/WAVE header); expected {EXPECTED_WAV}")
        if head[:4] == b"RF64":
            return  # 64-bit sizes live in the ds64 chunk; libsndfile checks those
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            tag, length = struct.unpack("<4sI", f.read(8))
            if tag == b"data":
                if length != 0xFFFFFFFF and pos + 8 + length > size:
                    raise records.DataError(
                        path, f"truncated WAV: the data chunk declares {length} bytes but "
                              f"only {size - pos - 8} follow; expected {EXPECTED_WAV}")
                return
            pos += 8 + length + (length & 1)
    raise records.DataError(path, f"WAV file without a data chunk; expected {EXPECTED_WAV}")


def wav_info(path) -> WavInfo:
    """Duration and format of a recording from its header; `DataError` naming it when bad.

    Missing, empty, truncated, non-WAV and sample-less files are all errors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise records.DataError(path, f"file not found; expected {EXPECTED_WAV}")
    size = os.path.getsize(path)
    if size == 0:
        raise records.DataError(path, f"empty file; expected {EXPECTED_WAV}")
    _check_riff(path, size)
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError) as e:
        raise records.DataError(path, f"unreadable audio ({e}); expected {EXPECTED_WAV}") from None
    if info.format not in _WAV_FORMATS:
        raise records.DataError(path, f"{info.format} file; expected {EXPECTED_WAV}")
    if info.frames <= 0 or info.samplerate <= 0:
        raise records.DataError(path, f"WAV file without samples; expected {EXPECTED_WAV}")
    return WavInfo(duration=info.frames / info.samplerate, samplerate=int(info.samplerate),
                   channels=int(info.channels), subtype=str(info.subtype))


def sound_info(path) -> WavInfo:
    """Like `wav_info` for any format soundfile reads (header only, no decoding)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise records.DataError(path, f"file not found; expected {ANY_AUDIO}")
    if os.path.getsize(path) == 0:  # libsndfile would only say "Format not recognised"
        raise records.DataError(path, f"empty file; expected {ANY_AUDIO}")
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError) as e:
        raise records.DataError(path, f"unreadable audio ({e}); expected {ANY_AUDIO}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise records.DataError(path, f"audio file without samples; expected {ANY_AUDIO}")
    return WavInfo(duration=info.frames / info.samplerate, samplerate=int(info.samplerate),
                   channels=int(info.channels), subtype=str(info.subtype))


def clamp_to_audio(start: float, end: float, duration: float):
    """``(start, end)`` clamped to a recording of ``duration`` s; None if it starts past it."""
    if start >= duration:
        return None
    return start, min(end, duration)


def fit_to_recording(wav, units: list, problems: Problems, annotations, what: str):
    """The recording ``wav`` checked from its header, and ``units`` ``[(line, name, start,
    end, payload)]`` (``line`` of ``annotations``, or None) clamped to its duration:
    ``(str(wav), kept units)``. A unit starting at or past the end is bad input, left out; a
    bad recording is reported with every ``what`` it takes along, and gives None."""
    try:
        duration = wav_info(wav).duration
    except records.DataError as e:
        stem = os.path.splitext(os.path.basename(wav))[0]
        problems.error(e, f"{len(units)} {what}(s) of {stem} skipped")
        return None
    kept = []
    for line, name, start, end, payload in units:
        span = clamp_to_audio(start, end, duration)
        if span is None:
            problems.bad(annotations, f"{name} {start:g}-{end:g} s starts at or past the end "
                                      f"of the audio ({duration:.3f} s in "
                                      f"{os.path.basename(wav)}); expected it inside the "
                                      "recording", line)
            continue
        kept.append((line, name, *span, payload))
    return str(wav), kept
