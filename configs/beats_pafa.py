"""Patient-Aware Feature Alignment (PAFA, Interspeech 2025; docs/method.md §10) on BEATs:
CE on the mean token + 1.0 x the PAFA loss (50 x PCSL + 0.0005 x GPAL) of a projector that
pools the tokens by attention, Linear(768, 768) -> LayerNorm -> ReLU -> Linear(768, 768), with
patient ids as targets; PAFA's recipe otherwise (`base.beats_recipe`, scripts/beats_pafa.sh).

Published ICBHI (official split, 5 seeds): Sp 82.05 +- 1.95, Se 47.63 +- 2.23, Score 64.84 +- 0.60.

    python -m resp_jax.sweep --config=configs/beats_pafa.py --config.data.root=ICBHI \
        --config.model.init_from=weights/beats_iter3_plus_as2m --workdir=runs/beats-pafa

`:quick`: a tiny BEATs from scratch on the synthetic default (`base.beats_quick`; the
projector follows model.width), with the PAFA term weighted 0.03 instead of 1.0 and batches of
16: from scratch its gradient is some 20 times CE's, and on 20 training patients (10 steps an
epoch) the weight 1.0 held CE at chance for all 20 epochs, a warm-up of the term too; 0.03 lets
CE learn as it does alone, the smaller batch gives it twice the steps (docs/benchmarks.md,
"PAFA's quick preset on 20 training patients").
"""

import pathlib
import runpy

from ml_collections import config_dict

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(arg=None):
    config = _base["beats_recipe"](_base["get_config"](arg), arg)
    config.method = "pafa"
    config.loss.heads = (("patient", 1.0),)  # the PAFA loss and its weight (--w_pafa 1.0)
    config.loss.pafa_pcsl = 50.0    # --lambda_pcsl
    config.loss.pafa_gpal = 0.0005  # --lambda_gpal
    # --hidden_dim None (= the input width), --output_dim 768: None = model.width
    config.model.proj_hidden = config_dict.placeholder(int)
    config.model.proj_out = config_dict.placeholder(int)
    config.model.proj_ln = True            # --norm_type ln
    config.model.proj_pool = "attention"   # ProjectionHead(attention=True) for BEATs
    if "quick" in (arg or "").split(","):  # from scratch: CE must learn first
        config.loss.heads = (("patient", 0.03),)
        config.train.batch_size = 16
    return config
