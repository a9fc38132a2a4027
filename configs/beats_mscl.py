"""M-SCL on BEATs (beyond the paper and PAFA): the paper's class 0.75 / sex x age 0.25 heads,
each with its own projector, on the self-supervised BEATs with PAFA's fine-tuning recipe
(`base.beats_recipe`: 100 pretraining epochs, batch 32, Adam 5e-5), then the paper's linear
evaluation (100 epochs, Adam lr 0.1) on the frozen encoder.

No published figure: the new row, to compare with BEATs + CE (Score 63.49), PAFA (64.84) and
M-SCL on CNN6 (58.04).

    python -m resp_jax.sweep --config=configs/beats_mscl.py --config.data.root=ICBHI \
        --config.model.init_from=weights/beats_iter3_plus_as2m --workdir=runs/beats-mscl

`:quick`: a tiny BEATs from scratch on the synthetic default (`base.beats_quick`).
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["beats_recipe"](_base["get_config"](arg), arg)
    config.method = "mscl"
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    return config
