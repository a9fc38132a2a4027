"""M-SCL on OPERA-CT (a row no paper has): the paper's class 0.75 / sex x age 0.25 heads, each
with its own projector, on the respiratory foundation model with OPERA's fine-tuning recipe
(`htsat_recipes.opera_recipe`: 64 pretraining epochs, batch 64, Adam 1e-4 x 0.99 per epoch,
gradient clipped to 1), then the paper's linear evaluation (100 epochs, Adam lr 0.1) on the
frozen encoder. SupCon's two views need augmentation, which OPERA's fine-tuning has none of:
the paper's SpecAugment (two 20-bin frequency and two 40-frame time masks, P(Z < 1) per batch)
on OPERA's [0, 1] log-mel, each mask filled with the example's mean (`augment.fill`); the best
test epoch of the linear stage, as the paper selects.

    python -m resp_jax.main --config=configs/opera_mscl.py --config.data.root=ICBHI \
        --config.model.init_from=weights/opera_ct --workdir=runs/opera-mscl

`:quick`: a tiny HTS-AT from scratch on the synthetic default (`htsat_recipes.htsat_quick`).
"""

import pathlib
import runpy

_here = pathlib.Path(__file__).parent
_base = runpy.run_path(str(_here / "base.py"))
_htsat = runpy.run_path(str(_here / "htsat_recipes.py"))


def get_config(arg=None):
    config = _htsat["opera_recipe"](_base["get_config"](arg), arg)
    config.method = "mscl"
    config.loss.heads = (("label", 0.75), ("sex+age_group", 0.25))
    config.augment.update(prob=_base["P_Z_BELOW_1"], apply_per="batch", freq_masks=2,
                          freq_width=20, time_masks=2, time_width=40, policy="reference",
                          fill="mean")
    config.eval.selection = "test_best"
    if "quick" in [t.strip() for t in (arg or "").split(",")]:
        config.augment.prob = 0.0  # `htsat_quick`: the masks would hide most of a 4 s clip
    return config
