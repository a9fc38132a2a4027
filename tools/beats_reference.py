"""Imports the reference BEATs implementation (microsoft/unilm beats/) from a directory a user
gives, for tools/make_beats_fixtures.py and tools/beats_benchmark.py; nothing of it is copied
here.

BEATs.py imports ``torchaudio.compliance.kaldi`` at the top. Where torchaudio cannot be
imported (its wheel must match the installed torch), ``kaldi`` names torchaudio's pure-Python
``compliance/kaldi.py`` (e.g. from an unpacked torchaudio wheel), which is then loaded on its
own under that module name; with ``kaldi=None`` a stand-in whose ``fbank`` raises is
registered instead (enough for callers that feed fbank features, not waveforms).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path


def _register(kaldi: types.ModuleType) -> None:
    package = types.ModuleType("torchaudio")
    package.__path__ = []
    compliance = types.ModuleType("torchaudio.compliance")
    compliance.__path__ = []
    package.compliance, compliance.kaldi = compliance, kaldi
    sys.modules.update({"torchaudio": package, "torchaudio.compliance": compliance,
                        "torchaudio.compliance.kaldi": kaldi})


def _kaldi_from(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", path)
    kaldi = importlib.util.module_from_spec(spec)
    _register(kaldi)  # kaldi.py's own `import torchaudio` then finds the stand-in package
    spec.loader.exec_module(kaldi)
    return kaldi


def _no_fbank(*args, **kwargs):
    raise RuntimeError("torchaudio is not importable here: feed fbank features, or pass the "
                       "path of torchaudio's compliance/kaldi.py")


def import_reference(reference: str | Path, kaldi: str | Path | None = None):
    """(BEATs, BEATsConfig, the backbone module, a note on the fbank source) of the reference
    code in ``reference`` (the directory of BEATs.py, backbone.py, modules.py)."""
    try:
        import torchaudio
        import torchaudio.compliance.kaldi  # noqa: F401
        note = f"torchaudio {torchaudio.__version__}"
    except Exception:  # noqa: BLE001  (a wheel built for another torch fails in many ways)
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        if kaldi is not None:
            _kaldi_from(Path(kaldi))
            version = Path(kaldi).resolve().parents[1] / "version.py"  # torchaudio/version.py
            found = re.search(r"__version__ = '([^']+)'", version.read_text()) \
                if version.is_file() else None
            note = (f"torchaudio {found.group(1) if found else '(version unknown)'}: "
                    "compliance/kaldi.py loaded alone")
        else:
            stand_in = types.ModuleType("torchaudio.compliance.kaldi")
            stand_in.fbank = _no_fbank
            _register(stand_in)
            note = "no torchaudio (fbank inputs only)"
    reference = Path(reference).resolve()
    if not (reference / "BEATs.py").is_file():
        raise SystemExit(f"{reference}: no BEATs.py (pass the directory of microsoft/unilm's "
                         "beats/ code)")
    sys.path.insert(0, str(reference))  # BEATs.py imports backbone, backbone imports modules
    import backbone
    from BEATs import BEATs, BEATsConfig
    return BEATs, BEATsConfig, backbone, note
