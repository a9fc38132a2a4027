"""Every configuration field of resp_jax, with the paper's hyperparameters (docs/method.md §5) as defaults.

Experiments (configs/ce.py, scl.py, ...) start from `get_config` and change what differs.
Fields left as placeholders (None) are dataset- or init-dependent and are filled in one place,
`resp_jax.configuration.resolve`, when a run starts; the resolved values are what `config.json` records.

Config arguments, comma separated after the file name (`configs/mscl.py:quick,sprsound`):
  icbhi | sprsound | sprsound_releases | hf_lung | manifest
                     the dataset (data.name, `resp_jax.data.sources.NAMES`; 'manifest' also
                     needs data.root=PATH/manifest.csv);
  quick              the README demo preset: short clips, small widths, few epochs, small batch
                     (AST configs: `ast_quick`, a tiny AST; BEATs configs: `beats_quick`).
The AST configs (configs/ast_*.py) start from `ast_recipe`: Patch-Mix's fine-tuning recipe;
the BEATs configs (configs/beats_*.py) from `beats_recipe`: PAFA's.
Command-line overrides come after: `--config.train.epochs=10`.
"""

from ml_collections import config_dict

from resp_jax.data.sources import NAMES as DATASETS

placeholder = config_dict.placeholder
# P(Z < 1) for a standard normal Z: how often the SCL and Patch-Mix codes apply SpecAugment
# (`p > torch.randn(1)`, p = 1). statistics.NormalDist().cdf(1.0).
P_Z_BELOW_1 = 0.8413447460685429


def get_config(arg=None):
    config = config_dict.ConfigDict()

    # Training method. One-stage: 'ce' (cross-entropy), 'hybrid' (alpha CE + (1 - alpha) SupCon),
    # 'patchmix_cl' (CE + w x Patch-Mix contrastive loss, w the weight of its single head
    # ('instance', w); AST only, docs/method.md §9), 'pafa' (CE + w x PAFA's patient loss, w
    # the weight of its single head ('patient', w); docs/method.md §10).
    # Two-stage (pretrain, then a linear classifier on frozen features): 'scl' (SupCon on the
    # heads of loss.heads; with a metadata head it is the paper's "SCL w/ metadata"), 'simclr'
    # (NT-Xent: head 'instance'), 'mscl' (one projector per head, weighted sum),
    # 'linear_probe' (no first stage: the linear classifier on the frozen encoder of
    # model.init_from or model.init_run, OPERA's benchmark protocol; docs/method.md §12).
    config.method = "ce"

    config.data = data = config_dict.ConfigDict()
    data.name = "icbhi"            # 'icbhi', 'sprsound', 'sprsound_releases', 'hf_lung' or
                                   # 'manifest' (your own recordings): resp_jax.data.sources
    data.root = ""                 # dataset root ('manifest': PATH/manifest.csv); '' = the
                                   # small synthetic default dataset (not for 'manifest')
    data.tfds_dir = ""             # where prepared (TFDS) data is cached;
                                   # '' = ~/.cache/resp_jax/tfds
    data.skip_bad = False          # skip (and report) unreadable files instead of failing
    data.sample_rate = 16000       # every recording is resampled to this rate (Hz); each rate
                                   # is a prepared copy of its own (48000: 'clap')
    data.resampler = "torchaudio"  # how: 'torchaudio' (torchaudio's default windowed sinc,
                                   # what every reference code ran, on the whole recording
                                   # before the cycles are cut) | 'soxr' (libsoxr HQ)
    data.fade = "cycle"            # 1/16-s linear fades: 'cycle' (each cycle faded in and out,
                                   # so the repeats of a padded cycle meet at faded seams: the
                                   # SCL code) | 'recording' (the recording faded at its ends,
                                   # cycles cut unfaded, hard seams: Patch-Mix and PAFA)
    data.duration = 8.0            # seconds every cycle is cut / extended to (8 s -> 251
                                   # log-mel frames, 798 fbank frames)
    data.frontend = "logmel"       # features: 'logmel' (64 log-mel bins: CNN6, the paper) |
                                   # 'fbank' (128 Kaldi fbank bins, AST's AudioSet
                                   # normalisation, no batch min-max: AST, docs/method.md §9) |
                                   # 'beats' (BEATs' 128-bin Kaldi fbank and normalisation,
                                   # no batch min-max: BEATs, docs/method.md §10) | 'clap'
                                   # (CLAP's 64-bin log-mel of 10 s at 48 kHz) | 'opera'
                                   # (OPERA-CT's min-maxed 64-bin log-mel): HTS-AT, §12
    data.wave_scale = 1.0          # Kaldi fbank front ends: each clip is multiplied by this
                                   # first (1.0: AST, Patch-Mix and PAFA; 32768.0 = 2**15:
                                   # upstream BEATs' preprocess)
    data.pad = "circular"          # how short cycles are extended: 'circular' (repeat) | 'zero'
    data.norm = "reference"        # 'reference': fixed norm_mean/std below; 'dataset': statistics
                                   # of this dataset's min-max-ed training features ('logmel'
                                   # only: 'fbank' uses AST's AudioSet mean and 2 x std)
    data.norm_mean = 0.3690        # standardisation after the batch min-max (ICBHI values,
    data.norm_std = 0.0255         # reused for SPRSound as the reference code does)
    data.test_split = placeholder(str)  # split reported as 'test'; None = the dataset's:
                                        # 'test' (ICBHI, HF_Lung, manifest), 'inter_test'
                                        # (SPRSound), the newest release (sprsound_releases)
    data.classes = placeholder(tuple)   # class names in label order; None = the dataset's
                                        # (manifest: the labels of its CSV); the normal class
                                        # comes first (label 0: Sp is its recall)
    data.normal_class = placeholder(str)  # None = 'normal' (manifest), the first class
                                          # (ICBHI 'normal', SPRSound 'Normal')
    data.fields = placeholder(tuple)    # filled when a run starts, not set: ((field, (value,
                                        # ...)), ...), the metadata codes the run used
    data.protocol = "official"     # which cycles train and test (docs/method.md §13):
                                   # 'official' (the dataset's own splits) | ICBHI:
                                   # 'leave_device_out' (every recording of the device
                                   # data.held_out tested, the other devices trained on) |
                                   # SPRSound: the challenge tasks 'task1_1' (events, normal
                                   # vs adventitious), 'task1_2' (events, 7 classes: the
                                   # official split), 'task2_1' (whole recordings: normal,
                                   # poor quality, adventitious), 'task2_2' (whole
                                   # recordings, 5 classes)
    data.held_out = ""             # the value a leave-one-out protocol holds out (ICBHI
                                   # devices: 'AKGC417L', 'LittC2SE', 'Litt3200',
                                   # 'Meditron'); '' for the other protocols

    # SpecAugment on training views only (docs/method.md §2.6); each view draws its own masks.
    config.augment = augment = config_dict.ConfigDict()
    augment.prob = P_Z_BELOW_1     # probability of applying the whole block: the references
                                   # apply it when 1 > a standard normal draw
    augment.apply_per = "batch"    # who draws that probability: 'batch' (one draw per batch and
                                   # view: the reference) | 'example' (one draw per example);
                                   # mask positions and widths are drawn per example either way
    augment.freq_masks = 2         # number of frequency masks
    augment.freq_width = 20        # mask width uniform in [0, freq_width) mel bins
    augment.time_masks = 2         # number of time masks
    augment.time_width = 40        # mask width uniform in [0, time_width) frames
    augment.policy = "reference"   # 'reference' (the SCL code: torchaudio's mask placement,
                                   # zero fill before the standardisation) | 'patchmix' (the
                                   # Patch-Mix code's icbhi_ast_sup: integer widths, start
                                   # uniform in [0, size - width], filled with the example's
                                   # mean, after the normalisation)
    augment.fill = "min"           # what the 'reference' policy's masks hold: 'min' (0 after
                                   # the batch min-max, i.e. the batch's quietest level: the
                                   # SCL code) | 'mean' (the example's mean: on small sets
                                   # SupCon then learns the classes, not the patients;
                                   # docs/benchmarks.md). 'patchmix' always fills with the mean

    config.model = model = config_dict.ConfigDict()
    model.name = "cnn6"            # architecture (resp_jax.models registry): 'cnn6' | 'ast'
                                   # | 'beats' | 'htsat' (its fields: model.htsat,
                                   # configs/htsat_recipes.py)
    model.channels = (64, 128, 256, 512)  # conv block widths; features = channels[-1]
    model.layout = "reference"     # spectrogram orientation: 'reference' (freq, time) | 'panns'
    model.init_from = ""           # converted encoder dir (tools/convert_panns.py for CNN6,
                                   # tools/convert_ast.py for AST, tools/convert_beats.py for
                                   # BEATs); '' = train from scratch
    model.init_run = ""            # a finished resp_jax run (its --workdir): its selected
                                   # encoder starts this run, its model.* placeholders fill
                                   # ours (e.g. probe an opera_mscl run); '' = none
    # Transformers (AST and BEATs; CNN6 ignores them). DeiT-base and BEATs: 768, 12, 12.
    model.width = 768              # token width = feature width
    model.depth = 12               # Transformer blocks
    model.heads = 12               # attention heads
    # AST and HTS-AT (BEATs reads its own from model.beats, beats_recipe; docs/method.md §9).
    model.dropout = 0.0            # dropout after the embeddings, attention output and MLP
                                   # (HTS-AT: after the MLP only, transformers' CLAP)
    model.attention_dropout = 0.0  # dropout on the attention weights
    model.drop_path = 0.0          # stochastic depth of the last block (0 .. this, linearly)
    model.layer_norm_eps = placeholder(float)  # None = the converted encoder's (1e-6 in the
                                               # original release, 1e-12 on the hub), 1e-6
                                               # from scratch
    model.attention = "auto"       # attention kernel: 'auto' (cuDNN flash attention on a GPU
                                   # with bfloat16 compute, else XLA's) | 'xla' | 'cudnn'
    model.remat = "auto"           # recomputed in the backward pass instead of kept: 'auto'
                                   # ('block' on CPUs, where it is fastest; 'none' on GPUs) |
                                   # 'none' | 'attention' (the [B, heads, T, T] weights) |
                                   # 'block' (all of each block); the same numbers either way
    model.fstride = 10             # AST's patch strides (16 x 16 patches) in frequency bins
    model.tstride = 10             # and frames (AST and Patch-Mix: 10, 10: overlapping
                                   # patches); a converted encoder must have the same
    model.pool = "cls"             # AST's output: 'cls' (the mean of the class and distillation
                                   # tokens' outputs: AST) | 'mean' (of every token's output)
    model.pos_embed = "ast"        # how init_from's position embedding fits the run's patch
                                   # grid: 'ast' (AST's cut / interpolation on the true
                                   # (frequency, time) grid) | 'patchmix_code' (the Patch-Mix
                                   # code's, made for the transposed grid: docs/fidelity.md)
    model.proj_hidden = 512        # projector hidden width (the code; the paper's text says 128)
    model.proj_out = 128           # projector output width
    model.proj_bn = False          # BatchNorm between the projector's layers (Patch-Mix's
                                   # projector: Linear, BatchNorm1d, ReLU, Linear)
    model.proj_ln = False          # LayerNorm there instead (PAFA's: Linear, LayerNorm, ReLU,
                                   # Linear)
    model.proj_pool = "mean"       # what the projectors see: 'mean' (the encoder's pooled
                                   # features) | 'attention' (PAFA: the encoder's tokens pooled
                                   # by softmax attention, Linear(width, 1); BEATs, 'pafa' only)
    model.classifier_norm = False  # LayerNorm before the linear classifier (AST's head)
    model.dtype = "float32"        # compute dtype: 'float32' | 'bfloat16' (BN stats, loss f32)
    model.bn_per_view = True       # encode the two views in two calls, so BatchNorm batch
                                   # statistics are per view (the reference); False = one call

    config.loss = loss = config_dict.ConfigDict()
    # Contrastive heads as (field, weight) pairs. A field is a metadata field ('label', 'sex',
    # 'age_group', ...), a '+'-composite ('sex+age_group'), or 'instance' (each example its own
    # class: SimCLR). Each head has its own projector. Ignored by 'ce'.
    loss.heads = (("label", 1.0),)
    loss.temperature = 0.06        # SupCon / NT-Xent temperature
    loss.denominator = "all"       # 'all': every other view (the code) | 'negatives' (eq. 2)
    loss.alpha = 0.5               # hybrid: alpha * CE + (1 - alpha) * SupCon
    loss.mix_beta = 1.0            # patchmix_cl: the mixing ratio lam ~ Beta(mix_beta, mix_beta)
    loss.pafa_pcsl = 50.0          # pafa: weight of the patient cohesion-separation term
                                   # (PAFA's --lambda_pcsl)
    loss.pafa_gpal = 0.0005        # pafa: weight of the global patient alignment term
                                   # (PAFA's --lambda_gpal)
    loss.class_weighted = placeholder(bool)  # CE weighted by 1/class frequency (training split);
                                             # None = the dataset's Source (ICBHI and
                                             # HF_Lung yes, SPRSound no)

    config.train = train = config_dict.ConfigDict()
    train.epochs = placeholder(int)   # None = the dataset's Source (ICBHI 400, SPRSound and
                                      # HF_Lung 200)
    train.batch_size = 128            # global batch, split over all devices (and hosts)
    train.lr = placeholder(float)     # None = 1e-4 with model.init_from or init_run, 1e-3
                                      # from scratch
    train.weight_decay = 1e-4         # L2 added to the gradient before Adam (PyTorch Adam)
    train.b1 = 0.9                    # Adam betas
    train.b2 = 0.999
    train.schedule = "periodic_cosine"  # 'periodic_cosine': PyTorch CosineAnnealingLR stepped
                                        # per epoch with T_max=cosine_t_max for all epochs (a
                                        # cosine of period 2*T_max: the code) | 'cosine': one
                                        # decay over all epochs (the paper's text) |
                                        # 'cosine_from_1': the same decay, epoch e at the rate
                                        # of e + 1 (Patch-Mix's code: the last epoch at
                                        # eta_min) | 'constant' | 'exponential' (lr x
                                        # lr_decay^epoch: OPERA)
    train.cosine_t_max = 40           # T_max of the periodic cosine, in epochs
    train.eta_min = 1e-6              # lowest learning rate of the cosines
    train.lr_decay = 0.99             # 'exponential' schedule: lr x this^epoch (OPERA)
    train.clip_norm = 0.0             # > 0: clip the gradient's global norm (L2 included) to
                                      # this before Adam (OPERA: 1.0); 0 = off
    train.head_weight_decay = placeholder(float)  # L2 of the classifier and projectors;
                                                  # None = train.weight_decay
    train.warmup_epochs = 0           # > 0: the first this many epochs rise linearly per step
                                      # from 0.1 x lr to the schedule's rate at that epoch
                                      # (Patch-Mix's --warm, warmup_learning_rate); 0 = off
    train.weight_average = 0.0        # after every step each weight (and BatchNorm statistic)
                                      # = this x before + (1 - this) x after; 0 = off
                                      # (Patch-Mix's --ma_update --ma_beta 0.5)
    train.seed = 0                    # seeds initialisation, shuffling, augmentation, val split
    train.log_every = 50              # steps between host reads of the loss (progress, NaN check)

    # Second stage of two-stage methods: a linear classifier on frozen encoder features
    # (inference mode, no SpecAugment); the only stage of 'linear_probe'.
    config.linear_eval = linear = config_dict.ConfigDict()
    linear.features = "per_epoch"     # 'per_epoch': recomputed every epoch from shuffled training
                                      # batches, each min-maxed on its own (the reference) |
                                      # 'cached': computed once from file-order batches (faster)
    linear.epochs = 100               # the M-SCL code's --epochs2; the original SCL code used 50
    linear.lr = 0.1                   # Adam, no schedule
    linear.weight_decay = 1e-4        # L2 added to the gradient, as in training
    linear.lr_decay = 1.0             # the rate x this after every epoch (OPERA's probe: 0.97)
    linear.clip_norm = 0.0            # > 0: clip the gradient's global norm (OPERA: 1.0)
    linear.batch_size = 128

    config.eval = ev = config_dict.ConfigDict()
    ev.selection = "test_best"        # epoch reported: 'test_best' (best test Score: the
                                      # paper's protocol), 'val' (best Score on a patient-disjoint
                                      # validation split carved from train), 'last'
    ev.val_fraction = 0.2             # share of training cycles (whole patients) used for 'val'
    ev.batch_size = 128               # global evaluation batch (padded and masked)
    ev.bootstrap_resamples = 2000     # resamples of the test patients behind every 95 % interval
                                      # (results.json, report, sweep; docs/method.md §11)

    return apply_args(config, arg)


def apply_args(config, arg):
    """Applies the comma-separated config arguments (see the module docstring)."""
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if token in DATASETS:
            config.data.name = token
        elif token == "quick":
            quick(config)
        else:
            raise ValueError(f"unknown config argument {token!r}; expected a comma-separated "
                             f"subset of {DATASETS + ('quick',)}")
    return config


def ast_recipe(config, arg=None):
    """The AST fine-tuning recipe of Patch-Mix CL's code (docs/method.md §9; [pm]
    scripts/icbhi_ce.sh, icbhi_patchmix_cl.sh, main.py, util/misc.py, util/augmentation.py):
    what both of its scripts pass, shared by the AST configs: DeiT-base AST on 128-bin Kaldi
    fbank of 8 s clips (798 frames; the recording faded at its ends, cycles cut without fades
    and repeated with hard seams), Adam lr 5e-5 with L2 1e-6, one cosine
    over 50 epochs to 5e-8 (the rate of the 1-based epoch), batch 8, every weight averaged
    0.5 / 0.5 with its value before each step (--ma_update --ma_beta 0.5), a LayerNorm +
    Linear classifier (AST's head), SpecAugment per example with P(Z < 1) = 0.841345: two
    frequency masks < 48 bins, two time masks < 160 frames, mean fill, after the
    normalisation. Evaluated every epoch. Whether CE is class-weighted differs between the
    scripts: each config sets it. Pass the converted AudioSet weights with
    --config.model.init_from (tools/convert_ast.py).

    One default is not the code's: the AudioSet position embedding is fitted to the patch grid
    as AST defines it (`model.pos_embed='ast'`: each patch gets its own (frequency, time)
    place's embedding). The Patch-Mix code fits it to the transposed grid and so hands
    scrambled positions to every patch; `--config.model.pos_embed=patchmix_code` reproduces
    that, and with it the authors' runs (docs/fidelity.md). The authors ran one seed (1): a
    sweep runs 5 (`sweep_seeds`, as for the BEATs configs); one run as theirs is
    `python -m resp_jax.main` with `--config.train.seed=1` (no bit-exact match across
    frameworks).
    """
    config.model.name = "ast"
    config.model.width, config.model.depth, config.model.heads = 768, 12, 12
    config.model.classifier_norm = True
    config.data.frontend = "fbank"
    config.data.duration = 8.0
    config.data.pad = "circular"
    config.data.fade = "recording"  # the recording faded, cycles cut unfaded (hard seams)
    config.augment.update(prob=P_Z_BELOW_1, apply_per="example", freq_masks=2, freq_width=48,
                          time_masks=2, time_width=160, policy="patchmix", fill="mean")
    config.train.update(epochs=50, batch_size=8, lr=5e-5, weight_decay=1e-6,
                        schedule="cosine_from_1", eta_min=5e-8, log_every=50,
                        weight_average=0.5)
    config.eval.batch_size = 64  # AST's output does not depend on the batch (no min-max, no BN)
    config.sweep_seeds = 5  # resp_jax.sweep's default --seeds (the authors ran seed 1 only)
    if "quick" in [t.strip() for t in (arg or "").split(",")]:
        ast_quick(config)
    return config


def ast_quick(config):
    """`quick` for the AST configs: a tiny AST (width 64, depth 2, 4 heads) from scratch on
    4 s clips, batch 32, 30 epochs at lr 1e-3 with one cosine decay (the recipe's 5e-5 is for
    fine-tuning AudioSet weights); Patch-Mix's other settings stay. Three changes make it learn
    in that time (docs/benchmarks.md, "A tiny AST on the synthetic set"): the output is the
    mean of every token (`model.pool='mean'`): a class token trained from scratch starts by
    seeing an average of the patches, and the loss sat at chance for 15 epochs (M-SCL's for
    60) before it learnt to look; no SpecAugment (`augment.prob=0`: the recipe's 160-frame
    time masks cover up to 80 % of a 4 s clip, and M-SCL's loss then stayed at chance for 20
    of 30 epochs); and patches do not overlap (`model.fstride = tstride = 16`: 192 patches
    instead of 468, a step about 4x faster). The linear stage of `ast_mscl` encodes the training
    split once (`linear_eval.features='cached'`): without a batch min-max (the fbank front end)
    or BatchNorm the per-epoch features are the same numbers, 100 encoder passes fewer."""
    config.model.width, config.model.depth, config.model.heads = 64, 2, 4
    config.model.pool = "mean"
    config.model.fstride, config.model.tstride = 16, 16
    config.augment.prob = 0.0
    config.data.duration = 4.0
    config.train.update(batch_size=32, epochs=30, lr=1e-3, schedule="cosine", eta_min=1e-6,
                        log_every=10)
    config.linear_eval.update(lr=1e-3, batch_size=32, features="cached")
    config.model.proj_hidden, config.model.proj_out = 128, 64
    return config


def beats_recipe(config, arg=None):
    """PAFA's BEATs fine-tuning recipe (docs/method.md §10; [pafa] scripts/beats_ce.sh,
    scripts/beats_pafa.sh, main.py, util/misc.py), shared by the BEATs configs: BEATs (iter3+
    AS2M, self-supervised; its cfg gives the architecture, model.beats) on BEATs' Kaldi fbank
    of 5 s clips (498 frames; the recording faded at its ends, cycles cut without fades and
    repeated with hard seams) without the upstream 2**15 waveform scaling, no
    SpecAugment, Adam lr 5e-5 with L2 1e-6, one cosine over 100 epochs to 5e-8 (the rate of
    the 1-based epoch), batch 32, unweighted CE on a Linear classifier of the mean token,
    weights averaged with the previous step's (0.5), the test set every epoch; 5 seeds in a
    sweep. Pass the converted weights with --config.model.init_from (tools/convert_beats.py).
    """
    config.model.name = "beats"
    config.model.width, config.model.depth, config.model.heads = 768, 12, 12
    # BEATs' own fields, in its cfg's names (BEATsConfig); None = the converted checkpoint's
    # (model.init_from), or resp_jax's from-scratch value (resp_jax.models.beats).
    ph = placeholder
    config.model.beats = config_dict.ConfigDict({
        "input_patch_size": ph(int),     # patch size and stride of the patch embedding (16)
        "embed_dim": ph(int),            # patch embedding width before the projection (512)
        "conv_bias": ph(bool),           # a bias in the patch convolution
        "encoder_ffn_embed_dim": ph(int),  # MLP width (3072; scratch: 4 x model.width)
        "activation_fn": ph(str),        # MLP activation ('gelu' only)
        "layer_norm_first": ph(bool),    # pre-LayerNorm layers (False only: post-LN)
        "deep_norm": ph(bool),           # residuals x * (2 depth)^(1/4) + f(x)
        "conv_pos": ph(int),             # kernel of the convolutional position embedding (128)
        "conv_pos_groups": ph(int),      # its groups (16)
        "relative_position_embedding": ph(bool),  # a relative position bias in attention
        "num_buckets": ph(int),          # its distance buckets (320)
        "max_distance": ph(int),         # distance of its last bucket
        "gru_rel_pos": ph(bool),         # the bias gated per query (grep_linear, grep_a)
        "dropout": ph(float),            # dropout of the layer outputs and the tokens
        "attention_dropout": ph(float),  # dropout of the attention weights
        "activation_dropout": ph(float),  # dropout after the MLP activation
        "encoder_layerdrop": ph(float),  # LayerDrop: each layer skipped with this probability
        "dropout_input": ph(float),      # dropout after the patch embedding's projection
        "layer_wise_gradient_decay_ratio": ph(float),  # gradient x this at each layer's input
    })
    config.data.frontend = "beats"
    config.data.duration = 5.0
    config.data.pad = "circular"
    config.data.fade = "recording"  # the recording faded, cycles cut unfaded (hard seams)
    config.data.wave_scale = 1.0  # PAFA comments the 2**15 out (upstream: 32768.0)
    config.augment.prob = 0.0     # --nospec
    config.train.update(epochs=100, batch_size=32, lr=5e-5, weight_decay=1e-6,
                        schedule="cosine_from_1", eta_min=5e-8, weight_average=0.5,
                        log_every=50)
    config.loss.class_weighted = False
    config.eval.batch_size = 64  # BEATs' output does not depend on the batch (no BatchNorm)
    config.sweep_seeds = 5  # resp_jax.sweep's default --seeds for this config (PAFA's 5 seeds)
    if "quick" in [t.strip() for t in (arg or "").split(",")]:
        beats_quick(config)
    return config


def beats_quick(config):
    """`quick` for the BEATs configs: a tiny BEATs (width 64, depth 2, 4 heads, a 32-wide patch
    embedding, MLP 128) from scratch on 5 s clips, batch 32, 20 epochs at lr 1e-3 with one
    cosine decay (the recipe's 5e-5 is for fine-tuning pretrained weights), and the upstream
    2**15 waveform scaling: without it BEATs' normalisation leaves the inputs near -1.6 with
    little spread, and this model learned nothing of the synthetic set in 20 epochs
    (docs/benchmarks.md). `beats_mscl`'s linear stage encodes the training split once
    (`linear_eval.features='cached'`): without a batch min-max or BatchNorm the per-epoch
    features are the same numbers, 100 encoder passes fewer. PAFA's other settings stay. With
    the reference's from-scratch initialisation (`post_extract_proj`, the position
    convolution's weight-norm gain; resp_jax.models.beats) CE leaves chance in its third epoch
    and PAFA in about its tenth (the patient loss first): docs/benchmarks.md."""
    config.model.width, config.model.depth, config.model.heads = 64, 2, 4
    config.model.beats.update(embed_dim=32, encoder_ffn_embed_dim=128)
    config.data.wave_scale = 32768.0
    config.train.update(batch_size=32, epochs=20, lr=1e-3, schedule="cosine", eta_min=1e-6,
                        log_every=10)
    config.linear_eval.update(lr=1e-3, batch_size=32, features="cached")
    config.model.proj_hidden, config.model.proj_out = 128, 64
    return config


def quick(config):
    """The README demo: a few minutes on a 2-core CPU with the synthetic default dataset.

    Smaller widths, 4 s clips, batch 32 and 30 epochs with one cosine decay, a linear
    classifier trained at lr 1e-3 (the paper's 0.1 makes its test score jump by +-20 points
    from epoch to epoch at these sizes), and SpecAugment's masks filled with each example's
    mean instead of the batch's minimum (augment.fill; on the demo's few dozen patients the
    minimum fill leaves M-SCL near 64 on new patients, the mean near 95: docs/benchmarks.md,
    "Two-stage methods on small sets"); the losses, optimiser and selection stay the paper's.
    """
    config.data.duration = 4.0
    config.model.channels = (16, 32, 64, 128)
    config.model.proj_hidden = 128
    config.model.proj_out = 64
    config.train.batch_size = 32
    config.train.epochs = 30
    config.train.schedule = "cosine"
    config.train.log_every = 10
    config.linear_eval.lr = 1e-3
    config.linear_eval.batch_size = 32
    config.eval.batch_size = 64
    config.augment.fill = "mean"
    return config


def demo(config):
    """`quick` cut further for the README demo (`make demo`, configs/mscl.py:quick), which
    should end within 3 minutes on 2 CPU cores from a fresh clone: CNN6 widths 8-64 (a
    quarter of 16-128's arithmetic) and the linear stage's features computed once
    (`linear_eval.features='cached'`, docs/fidelity.md) instead of in each of its 100 epochs.
    On the synthetic default M-SCL still scores 93.9, 88.7 and 92.5 over its last 10 linear
    epochs for seeds 0, 1 and 2 (docs/benchmarks.md)."""
    config.model.channels = (8, 16, 32, 64)
    config.linear_eval.features = "cached"
    return config
