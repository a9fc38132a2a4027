"""BEATs fine-tuning with cross-entropy: PAFA's baseline ("BEATs + CE", PAFA's Table 1),
the self-supervised BEATs iter3+ (AS2M) trained end to end on PAFA's recipe
(`base.beats_recipe`: Adam 5e-5, 100 epochs, batch 32, 5 s clips, BEATs' fbank, no SpecAugment,
weight average 0.5; docs/method.md §10).

Published ICBHI (official split, 5 seeds): Sp 78.77 +- 3.07, Se 48.21 +- 2.32, Score 63.49 +- 1.08.

    python -m resp_jax.sweep --config=configs/beats_ce.py --config.data.root=ICBHI \
        --config.model.init_from=weights/beats_iter3_plus_as2m --workdir=runs/beats-ce

`:quick`: a tiny BEATs from scratch on the synthetic default (`base.beats_quick`).
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["beats_recipe"](_base["get_config"](arg), arg)
    config.method = "ce"
    config.loss.heads = ()
    return config
