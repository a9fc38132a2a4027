"""M-SCL with more pretext tasks (the paper's conclusion): class, recording device and chest
location heads, each with its own projector, then a linear classifier. Not a row of the paper.

ICBHI: ('label', 0.5), ('device', 0.25), ('location', 0.25). SPRSound records no device, so
with `:sprsound` the heads are ('label', 0.75), ('location', 0.25). Any metadata field
(sex, age_group, device, location, mode, diagnosis) or a '+'-composite can be a head; change
the heads and weights with --config.loss.heads="(('label', 0.5), ('mode', 0.5))".
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "mscl"
    if config.data.name == "sprsound":
        config.loss.heads = (("label", 0.75), ("location", 0.25))
    else:
        config.loss.heads = (("label", 0.5), ("device", 0.25), ("location", 0.25))
    return config
