"""Converts PANNs' AudioSet CNN6 weights into a resp_jax encoder directory (docs/method.md §7).

    python tools/convert_panns.py --checkpoint=Cnn6_mAP=0.343.pth --output=DIR

The checkpoint (Zenodo record 3987831) is a torch pickle holding a dict whose 'model' entry is
the state dict; a bare state dict is accepted too. Only the four convolution blocks are kept:
``conv_block{i}.conv1.weight`` (out, in, 5, 5) becomes the flax kernel (5, 5, in, out) and
``conv_block{i}.bn1.{weight, bias, running_mean, running_var}`` the BatchNorm scale, bias,
mean and var. PANNs' front end and head (``spectrogram_extractor.*``, ``logmel_extractor.*``,
``bn0.*``, ``fc1.*``, ``fc_audioset.*``) are not part of the encoder and are left out; any other
difference from a CNN6 (missing, extra or wrong-shaped entries) is an error that lists them all.
DIR is written atomically and read back by ``resp_jax.models.cnn6.load_pretrained(DIR)`` or the
training config's ``model.init_from=DIR``.

This is the only module of resp_jax that imports torch (the optional ``torch`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

try:
    from resp_jax.models import cnn6
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from resp_jax.models import cnn6

IGNORED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "bn0.", "fc1.",
                    "fc_audioset.")
# PyTorch BatchNorm entry -> (flax collection, flax name).
BN_ENTRIES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
# The first bytes of a pre-1.6 (non-zip) torch.save file: its pickled magic number.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message says why (and lists every difference)."""


def expected_entries(channels: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """State-dict keys the encoder needs and their PyTorch shapes."""
    entries = {}
    for i, (cin, cout) in enumerate(zip((1, *channels[:-1]), channels), start=1):
        entries[f"conv_block{i}.conv1.weight"] = (cout, cin, 5, 5)
        for name in BN_ENTRIES:
            entries[f"conv_block{i}.bn1.{name}"] = (cout,)
    return entries


def _numpy_globals() -> list[Any]:
    """Numpy array reconstruction globals, allowed so that checkpoints whose extra entries
    (e.g. a sampler state) hold numpy arrays load with ``weights_only=True``."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                          (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                          (multiarray.scalar, "numpy.core.multiarray.scalar")]
    for code in "?bBhHiIlLqQefdgFDG":
        allowed.append(type(np.dtype(code)))
    return allowed


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` on CPU, refusing arbitrary pickled code unless ``trust_pickle``."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not zipfile.is_zipfile(path) and head != _LEGACY_MAGIC:
        raise ConversionError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip "
                              "archive nor a legacy torch.save pickle)")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported global" in str(e):
            detail = next(line.strip() for line in str(e).splitlines()
                          if "Unsupported global" in line)
            raise ConversionError(
                f"{path}: holds Python objects other than tensors ({detail}); if you trust "
                "the file, run again with --trust_pickle") from e
        raise ConversionError(f"{path}: cannot read the PyTorch checkpoint: {e}") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... on corrupt files
        raise ConversionError(f"{path}: cannot read the PyTorch checkpoint: "
                              f"{type(e).__name__}: {e}") from e


def state_dict_of(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state dict: ``obj['model']`` (PANNs' format) or ``obj`` itself."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict with a 'model' state dict (PANNs' format) "
                              f"or a state dict of tensors, got a dict with keys "
                              f"{sorted(map(str, obj))[:20]}")
    raise ConversionError(f"{path}: expected a dict with a 'model' state dict, "
                          f"got {type(obj).__name__}")


def _architecture_hint(keys: Sequence[str], channels: Sequence[int]) -> str:
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"conv_block(\d+)\.", k))})
    extra_blocks = [b for b in blocks if b > len(channels)]
    double = any(re.match(r"conv_block\d+\.(conv2|bn2)\.", k) for k in keys)
    if not extra_blocks and not double:
        return ""
    parts = []
    if extra_blocks:
        parts.append(", ".join(f"conv_block{b}" for b in extra_blocks))
    if double:
        parts.append("two convolutions per block (conv2/bn2)")
    return (f" (it has {' and '.join(parts)}: another PANNs architecture such as Cnn10 or "
            "Cnn14, not Cnn6)")


def check_state_dict(state: Mapping[str, Any], channels: Sequence[int], path: Path) -> None:
    """Raises ConversionError listing every way ``state`` differs from a CNN6 state dict."""
    expected = expected_entries(channels)
    optional = {f"conv_block{i}.bn1.num_batches_tracked": ()
                for i in range(1, len(channels) + 1)}
    problems = []
    keys = [k for k in state if isinstance(k, str)]
    problems += [f"key {k!r} is not a string" for k in state if not isinstance(k, str)]
    problems += [f"missing {k} (expected shape {shape})"
                 for k, shape in expected.items() if k not in state]
    for k in keys:
        if k in expected or k in optional:
            value = state[k]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{k}: not a tensor ({type(value).__name__})")
                continue
            want = expected.get(k, optional.get(k))
            if tuple(value.shape) != want:
                problems.append(f"{k}: shape {tuple(value.shape)}, expected {want}")
            elif k in expected and not value.is_floating_point():
                problems.append(f"{k}: dtype {value.dtype}, expected a floating-point tensor")
            elif k in expected and not bool(torch.isfinite(value).all()):
                problems.append(f"{k}: has non-finite values")
        elif not k.startswith(IGNORED_PREFIXES):
            shape = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else "?"
            problems.append(f"unexpected {k} (shape {shape})")
    if problems:
        raise ConversionError(
            f"{path} is not a PANNs Cnn6 checkpoint with channels {tuple(channels)}"
            f"{_architecture_hint(keys, channels)}; {len(problems)} difference(s):\n  "
            + "\n  ".join(problems))


def to_flax(state: Mapping[str, Any], channels: Sequence[int]) -> dict[str, Any]:
    """Maps a checked state dict to the encoder's ``{'params', 'batch_stats'}`` (numpy)."""
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}

    def array(key: str) -> np.ndarray:
        return state[key].detach().to(torch.float32).cpu().numpy()

    for i in range(1, len(channels) + 1):
        block = f"conv_block{i}"
        kernel = array(f"{block}.conv1.weight").transpose(2, 3, 1, 0)  # (kh, kw, in, out)
        variables["params"][block] = {"conv": {"kernel": np.ascontiguousarray(kernel)},
                                      "bn": {}}
        variables["batch_stats"][block] = {"bn": {}}
        for name, (collection, flax_name) in BN_ENTRIES.items():
            variables[collection][block]["bn"][flax_name] = array(f"{block}.bn1.{name}")
    return variables


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(checkpoint: str | Path, output: str | Path, *,
            channels: Sequence[int] = cnn6.DEFAULT_CHANNELS, layout: str = "reference",
            overwrite: bool = False, trust_pickle: bool = False) -> Path:
    """Checks ``checkpoint`` and writes the converted encoder to ``output``; returns its path.

    Nothing is written unless every check passes; ``output`` appears only when complete.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    channels = tuple(channels)
    if layout not in cnn6.LAYOUTS:
        raise ConversionError(f"layout must be one of {cnn6.LAYOUTS}, got {layout!r}")
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not empty "
                              "(choose another --output or pass --overwrite)")
    state = state_dict_of(load_checkpoint(checkpoint, trust_pickle=trust_pickle), checkpoint)
    check_state_dict(state, channels, checkpoint)
    meta = {"channels": list(channels), "layout": layout,
            "source": {"checkpoint": checkpoint.name, "sha256": _sha256(checkpoint),
                       "converter": "tools/convert_panns.py"}}
    return cnn6.save_encoder(output, to_flax(state, channels), meta, overwrite=overwrite)


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not channels or min(channels) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return channels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="PANNs checkpoint, e.g. Cnn6_mAP=0.343.pth")
    parser.add_argument("--output", required=True, type=Path,
                        help="directory to create for the converted encoder")
    parser.add_argument("--layout", default="reference", choices=cnn6.LAYOUTS,
                        help="orientation stored as the encoder's default (docs/method.md §3)")
    parser.add_argument("--channels", default=cnn6.DEFAULT_CHANNELS, type=_channels,
                        help="expected block widths (default 64,128,256,512)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output directory")
    parser.add_argument("--trust_pickle", action="store_true",
                        help="allow arbitrary pickled objects (only for a file you trust)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.checkpoint, args.output, channels=args.channels, layout=args.layout,
                      overwrite=args.overwrite, trust_pickle=args.trust_pickle)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
