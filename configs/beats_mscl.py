"""M-SCL on BEATs (beyond the paper and PAFA): the paper's class 0.75 / sex x age 0.25 heads,
each with its own projector, on the self-supervised BEATs with PAFA's fine-tuning recipe
(`base.beats_recipe`: 100 pretraining epochs, batch 32, Adam 5e-5), then the paper's linear
evaluation (100 epochs, Adam lr 0.1) on the frozen encoder.

PAFA trains without SpecAugment (--nospec), but SupCon needs two views that differ: the
pretraining views get the M-SCL code's SpecAugment ([mscl] augmentations.py, main.py:65-66),
its masks at the same physical sizes on BEATs' fbank: one draw per batch and view with
P(Z < 1), two frequency masks under 20 bins (20 of its 64 log-mel bins over 50-2000 Hz span
the same ~440 mel as 20 of the fbank's 128 over 20-8000 Hz), two time masks under 128 frames
(its 40 frames of 32 ms = 1.28 s = 128 frames of 10 ms), filled with the batch's minimum.
`:quick` (a tiny BEATs from scratch) has none: with these masks its SupCon loss stopped
falling in the third epoch and the linear stage stayed at Score 50 on 20 training patients,
two seeds; without them it learns (docs/benchmarks.md).

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
    # The M-SCL code's SpecAugment (--freqmask 20 --timemask 40 on 32-ms frames), in fbank
    # bins and 10-ms frames; per batch and view, P(Z < 1), the batch's minimum in the masks.
    config.augment.update(prob=_base["P_Z_BELOW_1"], apply_per="batch", policy="reference",
                          freq_masks=2, freq_width=20, time_masks=2, time_width=128,
                          fill="min")
    if "quick" in (arg or "").split(","):  # from scratch, the masks kept SupCon at chance
        config.augment.prob = 0.0
    return config
