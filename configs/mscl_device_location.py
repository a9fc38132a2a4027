"""M-SCL with more pretext tasks (the paper's conclusion): class, recording device and chest
location heads, each with its own projector, then a linear classifier. Not a row of the paper.

ICBHI: ('label', 0.5), ('device', 0.25), ('location', 0.25). A dataset that records only one
of the two (SPRSound: location; HF_Lung: device) keeps that one: ('label', 0.75), (field,
0.25). Any metadata field (sex, age_group, device, location, mode, diagnosis) or a
'+'-composite can be a head; change the heads and weights with
--config.loss.heads="(('label', 0.5), ('mode', 0.5))".
"""

import pathlib
import runpy

from resp_jax.data import sources

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))
PRETEXT = ("device", "location")


def get_config(arg=None):
    config = _base["get_config"](arg)
    config.method = "mscl"
    source = sources.get(config.data.name)
    # A schema read from the data (a manifest) is checked when the run starts.
    fields = [f for f in PRETEXT if source.schema_from_data or f in dict(source.vocabs)]
    config.loss.heads = (("label", 1.0 - 0.25 * len(fields)),) + tuple((f, 0.25) for f in fields)
    return config
