"""M-SCL: a class head and a sex x age head, each with its own projector, weighted 0.75 / 0.25
(the code; the paper's text swaps them), then a linear classifier (row 'M-SCL').

Arguments as in base.py, e.g. `--config=configs/mscl.py:quick,sprsound`; `quick` is the
README demo (`make demo`), cut further by base.py's `demo`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "mscl"
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    if "quick" in [t.strip() for t in (arg or "").split(",")]:
        _base["demo"](config)  # the README demo (make demo)
    return config
