"""The HTS-AT recipes shared by configs/clap_*.py and configs/opera_*.py (not a config itself):
CLAP's audio tower fine-tuned as BTS does it, BTS itself (CLAP's two towers, the metadata as
text), OPERA-CT fine-tuned or probed as OPERA's benchmark does it, and `htsat_quick`, their
tiny from-scratch preset (docs/method.md §12, §14).

Each function takes a config from configs/base.py and the config argument string; the
configs load this file with runpy, as they load base.py.
"""

from ml_collections import config_dict

ph = config_dict.placeholder


def htsat_fields(config):
    """model.name='htsat' and its model.htsat fields; None = the converted encoder's
    (model.init_from) or HTS-AT-tiny's (resp_jax.models.htsat.ARCH_DEFAULTS)."""
    config.model.name = "htsat"
    config.model.htsat = config_dict.ConfigDict({
        "num_mel_bins": ph(int),     # mel bins of the input (64)
        "spec_size": ph(int),        # side of the square image the frames are folded into (256)
        "patch_size": ph(int),       # patch embedding kernel (4)
        "patch_stride": ph(int),     # and stride (4): a 64 x 64 token map
        "embed_dim": ph(int),        # width of the first stage (96; doubled per stage)
        "depths": ph(tuple),         # Swin blocks per stage ((2, 2, 6, 2))
        "heads": ph(tuple),          # attention heads per stage ((4, 8, 16, 32))
        "window_size": ph(int),      # attention window (8 x 8 tokens)
        "mlp_ratio": ph(float),      # MLP width / stage width (4)
        "layer_norm_eps": ph(float),  # 1e-5
        "projection_dim": ph(int),   # CLAP's audio projection (512); 0 = none (OPERA-CT)
        "tscam_classes": ph(int),    # OPERA-CT's token-semantic head (527); 0 = none
        "output": ph(str),           # pooled features: 'latent' (768, the mean token) |
                                     # 'projection' (CLAP's audio_embeds); None = the
                                     # projection when there is one
    })
    config.model.remat = "auto"
    return config


def clap_recipe(config, arg=None):
    """BTS's recipe for fine-tuning CLAP's audio tower on ICBHI ([bts] scripts/
    icbhi_audio-clap_ce.sh:8-30, main.py, util/icbhi_dataset.py, util/icbhi_util.py,
    util/misc.py): laion/clap-htsat-unfused's audio tower and projection (a Linear classifier
    on its 512-d audio_embeds, models/clap.py:11-16, main.py:191-193), recordings resampled
    to 48 kHz with torchaudio's windowed sinc and faded at their ends, cycles cut unfaded and
    repeated to 8 s with hard seams (fade-out 1/16 s), CLAP's feature extractor (10 s, repeatpad,
    rand_trunc's Slaney mel), no SpecAugment, Adam lr 5e-5 with L2 1e-6, one cosine over 50
    epochs to 5e-8 at the 1-based epoch (--cosine), batch 8, unweighted CE, every weight
    averaged 0.5 / 0.5 with its value before the step (--ma_update --ma_beta 0.5), the test
    set every epoch; transformers' dropout 0.1 after each MLP (ClapAudioConfig's
    hidden_dropout_prob). Pass the converted weights with --config.model.init_from
    (tools/convert_clap.py)."""
    htsat_fields(config)
    config.data.frontend = "clap"
    config.data.sample_rate = 48000
    config.data.fade = "recording"  # util/icbhi_util.py:423-462: the recording faded, not cycles
    config.data.duration = 8.0
    config.data.pad = "circular"
    config.augment.prob = 0.0
    config.model.dropout = 0.1
    config.model.htsat.update(projection_dim=512, output="projection")  # CLAP's audio_embeds
    config.train.update(epochs=50, batch_size=8, lr=5e-5, weight_decay=1e-6,
                        schedule="cosine_from_1", eta_min=5e-8, weight_average=0.5,
                        log_every=50)
    config.loss.class_weighted = False
    config.eval.batch_size = 64  # inference uses bn0's running statistics
    config.sweep_seeds = 5  # BTS's 5 seeds
    if _quick(arg):
        htsat_quick(config)
    return config


def bts_recipe(config, arg=None):
    """BTS ([bts] scripts/icbhi_bts_meta_all.sh:8-30, main.py:180-233, models/clap.py:20-37,
    util/icbhi_util.py:129-243, util/icbhi_dataset.py:185-197): `clap_recipe` with CLAP's text
    tower beside the audio tower (a ClapModel, --model_type ClapModel): each cycle's age
    group, sex, chest location and device written as BTS's sentence (--meta_mode all),
    tokenised to 64 tokens, both towers' projections L2-normalised and concatenated (text
    first: 1024-d), one Linear classifier on them, unweighted CE (no contrastive term: BTS
    never asks ClapModel for its loss), everything trained (both towers, the classifier);
    the text tower's dropout 0.1 (ClapTextConfig's). Pass the converted weights with
    --config.model.init_from (tools/convert_clap.py writes the text tower to DIR/text)."""
    clap_recipe(config, arg)
    config.method = "bts"
    config.loss.heads = ()
    config.model.text = config_dict.ConfigDict({
        "init_from": ph(str),       # converted text tower; None = <model.init_from>/text
                                    # (tools/convert_clap.py), or from scratch without
                                    # model.init_from; '' = from scratch (word tokenizer)
        "vocab_size": ph(int),      # tokens (50265; from scratch: the sentences' words + 4)
        "hidden_size": ph(int),     # RoBERTa-base: 768
        "num_hidden_layers": ph(int),    # 12
        "num_attention_heads": ph(int),  # 12
        "intermediate_size": ph(int),    # 3072
        "max_position_embeddings": ph(int),  # 514 (pad_token_id + 1 + the longest input)
        "type_vocab_size": ph(int),  # 1
        "layer_norm_eps": ph(float),  # 1e-12
        "projection_dim": ph(int),  # CLAP's text projection (512)
        "pad_token_id": ph(int),    # 1 (RoBERTa's <pad>)
        "dropout": ph(float),       # after the embeddings, attention output and MLP; None =
                                    # the converted tower's hidden_dropout_prob (0.1)
        "attention_dropout": ph(float),  # on the attention weights; None = the tower's (0.1)
    })
    config.bts = config_dict.ConfigDict({
        "fields": ("age_group", "sex", "location", "device"),  # what the sentence says
                                    # (BTS's --meta_mode: a subset of these four)
        "max_length": 64,           # tokens per sentence, padded (BTS's tokenizer call)
    })
    if _quick(arg):  # the audio tower: a finished clap_ce:quick run's (model.init_run;
        # configs/clap_bts.py): from scratch it does not learn in 20 epochs
        config.model.text.update(init_from="", hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=66, projection_dim=64)
    return config


def opera_recipe(config, arg=None):
    """OPERA's fine-tuning of OPERA-CT ([opera] src/benchmark/other_eval/finetuning.py:375-519
    with its ICBHI task's arguments, :554-555; src/model/models_eval.py:15-181), on ICBHI's
    cycles (the closest task: OPERA fine-tunes on ICBHI's recordings, COPD vs healthy):
    OPERA's log-mel (16 kHz, 64 Slaney bins to 8 kHz, power_to_db(ref=max), min-max) of
    8.18 s clips (256 frames, as its fine-tuning extracts them), no augmentation, Adam lr 1e-4,
    batch 64, 64 epochs, the rate x 0.99 after each epoch (DecayLearningRate), the gradient
    clipped to norm 1 (gradient_clip_val), L2 in the loss as 1e-4 x the head's squared weights
    + 2e-5 x the encoder's (PyTorch-style weight decay 2e-4 and 4e-5: twice the loss
    coefficients), unweighted CE on a Linear head of the 768-d latent, stochastic depth 0.1
    (HTSAT_Swin_Transformer's default), the checkpoint of the best validation epoch
    (eval.selection='val'). Pass the converted weights with --config.model.init_from
    (tools/convert_opera.py)."""
    htsat_fields(config)
    config.data.frontend = "opera"
    config.data.sample_rate = 16000
    config.data.resampler = "soxr"  # librosa.load's default res_type, soxr_hq (src/util.py)
    config.data.duration = 8.18
    config.data.pad = "circular"
    config.augment.prob = 0.0
    config.model.drop_path = 0.1
    config.train.update(epochs=64, batch_size=64, lr=1e-4, weight_decay=4e-5,
                        head_weight_decay=2e-4, schedule="exponential", lr_decay=0.99,
                        clip_norm=1.0, log_every=20)
    config.loss.class_weighted = False
    config.eval.selection = "val"
    config.eval.batch_size = 64
    config.sweep_seeds = 5  # OPERA's n_run 5
    if _quick(arg):
        htsat_quick(config)
    return config


def opera_probe(config):
    """OPERA's linear probe of a frozen encoder ([opera] src/benchmark/linear_eval.py:147-224
    with :39-40 and the defaults of :620-622; models_eval.py:579-716): features of 8 s clips
    computed once, a Linear head, Adam lr 1e-4, batch 32, 64 epochs, the rate x 0.97 after
    each epoch, the gradient clipped to norm 1, L2 1e-5 x the head's squared weights
    (PyTorch-style 2e-5), the best validation epoch."""
    config.method = "linear_probe"
    config.loss.heads = ()
    config.data.duration = 8.0
    config.linear_eval.update(epochs=64, batch_size=32, lr=1e-4, weight_decay=2e-5,
                              lr_decay=0.97, clip_norm=1.0, features="cached")
    return config


def htsat_quick(config):
    """`quick` for the HTS-AT configs: a tiny HTS-AT from scratch (16-wide first stage, two
    stages of 2 blocks with 2 and 4 heads, 16 x 16 patches on the 256 x 256 image: a 16 x 16
    token map, windows of 4; CLAP's projection to 64 when the recipe has one), 4 s clips
    (CLAP: 10 s, its whole window: with 4 s clips, tiled twice and followed by 2 s of padded
    silence at the -100 dB floor, this model stayed at the class prior for 15 epochs, with
    and without the weight average, dropout, the projection or gradient clipping;
    docs/benchmarks.md), no SpecAugment (as `ast_quick`: opera_mscl's two 40-frame time masks hide up to 63 % of
    a 4 s clip, and its SupCon loss stayed at chance, 4.13, from the second epoch on),
    batch 32, 20 epochs at lr 1e-3 with one cosine decay; the recipe's other settings stay."""
    config.model.htsat.update(embed_dim=16, depths=(2, 2), heads=(2, 4), patch_size=16,
                              patch_stride=16, window_size=4)
    config.data.duration = 4.0
    if config.data.frontend == "clap":
        config.model.htsat.projection_dim = 64
        config.data.duration = 10.0  # CLAP's whole window: no silence padded after the clip
    else:
        config.model.htsat.update(projection_dim=0, tscam_classes=0)
    config.augment.prob = 0.0  # as ast_quick: 40-frame time masks hide up to 63 % of 4 s
    config.train.update(batch_size=32, epochs=20, lr=1e-3, schedule="cosine", eta_min=1e-6,
                        log_every=10)
    config.eval.batch_size = 64
    config.linear_eval.update(lr=1e-3, batch_size=32, features="cached")
    config.model.proj_hidden, config.model.proj_out = 64, 32
    return config


def _quick(arg):
    return "quick" in [t.strip() for t in (arg or "").split(",")]
