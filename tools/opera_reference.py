"""Imports the reference OPERA code (evelyn0414/OPERA) from a directory a user gives, for
tools/make_opera_fixtures.py; nothing of it is copied here.

``HTSAT_Swin_Transformer`` comes from ``src/model/htsat/htsat.py`` (which imports its
``config`` module and torchlibrosa, whose STFT and mel layers it builds but does not use:
OPERA computes its features outside the model). ``pre_process_audio_mel_t`` is read alone
from ``src/util.py`` (whose other imports, torchaudio and seaborn among them, the fixtures do
not need) and run with librosa and numpy.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def import_reference(reference: str | Path):
    """(the htsat module, its config module, pre_process_audio_mel_t) of the OPERA checkout
    ``reference`` (the directory holding src/)."""
    reference = Path(reference).resolve()
    htsat_py = reference / "src" / "model" / "htsat" / "htsat.py"
    util_py = reference / "src" / "util.py"
    for path in (htsat_py, util_py):
        if not path.is_file():
            raise SystemExit(f"{reference}: no {path.relative_to(reference)} (pass the root of "
                             "an evelyn0414/OPERA checkout)")
    try:
        import torchlibrosa  # noqa: F401
    except ImportError:
        raise SystemExit("OPERA's htsat.py imports torchlibrosa: pip install torchlibrosa==0.1.0 "
                         "(OPERA's environment.yml pins 0.1.0)") from None
    sys.path.insert(0, str(reference))
    from src.model.htsat import config, htsat
    tree = ast.parse(util_py.read_text())
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
               and n.name == "pre_process_audio_mel_t"), None)
    if fn is None:
        raise SystemExit(f"{util_py}: no pre_process_audio_mel_t")
    import librosa
    import numpy as np
    namespace = {"librosa": librosa, "np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(util_py), "exec"), namespace)
    return htsat, config, namespace["pre_process_audio_mel_t"]
