"""Makes the BEATs parity fixtures of tests/test_beats_parity.py with the reference code.

    python tools/make_beats_fixtures.py --reference=DIR --out=tests/fixtures/beats \
        [--kaldi=PATH/torchaudio/compliance/kaldi.py] [--init-only]

``--reference``: a directory holding microsoft/unilm's ``beats/BEATs.py``, ``backbone.py`` and
``modules.py`` (a checkout of that folder; nothing of it is copied here). They are imported
from there (tools/beats_reference.py), so this script runs the reference implementation
itself. Where torchaudio cannot be imported (its wheel must match the installed torch),
``--kaldi`` names torchaudio's pure-Python ``compliance/kaldi.py`` (e.g. from an unpacked
torchaudio wheel), which is then loaded on its own.

Writes to ``--out``:
  checkpoint.pt   a tiny random BEATs (width 64, 2 layers, 4 heads, 32-wide patch embedding,
                  FFN 128, conv position embedding kernel 128 / 16 groups, gated relative
                  position bias with 32 buckets up to distance 24, deep norm) in the published
                  layout {'cfg': cfg, 'model': state_dict}, saved with torch.save;
  reference.npz   wave_int16 [2, 16000] (the input: 1 s at 16 kHz, samples / 32768 as
                  float32), fbank [1, 98, 128] (BEATs.preprocess of wave 0: upstream, with
                  its x 2**15 scaling, normalised), fbank_pafa [1, 98, 128] (the same without
                  the scaling, as PAFA's copy computes it: preprocess of wave / 2**15, exact
                  because 2**15 is a power of two), tokens [2, 48, 64] (extract_features of
                  both waves in eval mode), buckets_<num>_<max> [2001] (the reference's
                  relative position bucket of the distances -1000 .. 1000 for the published
                  bucket settings) and the torch / torchaudio versions used;
  init_stats.json the reference's own from-scratch initialisation of the same tiny model over
                  INIT_SEEDS torch seeds: per state-dict entry its shape and the mean, standard
                  deviation and largest |value| of all its draws together, with the torch
                  version. ``--init-only`` writes just this file (it needs no torchaudio).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from beats_reference import import_reference  # noqa: E402

CFG = {  # BEATsConfig fields of the tiny model
    "input_patch_size": 16, "embed_dim": 32, "conv_bias": False, "encoder_layers": 2,
    "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4,
    "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False,
    "deep_norm": True, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
    "relative_position_embedding": True, "num_buckets": 32, "max_distance": 24,
    "gru_rel_pos": True, "finetuned_model": False,
}
BUCKETS = ((320, 800), (320, 1280))  # (num_buckets, max_distance) tables to record
SAMPLES, SEED = 16000, 0
INIT_SEEDS = 16  # draws of the reference's initialisation pooled in init_stats.json


def init_stats(BEATs, BEATsConfig) -> dict:
    """Per state-dict entry of the tiny model as the reference initialises it from scratch:
    shape, mean, std, max |value| over INIT_SEEDS seeds pooled."""
    import torch

    draws: dict[str, list] = {}
    for seed in range(INIT_SEEDS):
        torch.manual_seed(seed)
        for name, p in BEATs(BEATsConfig(dict(CFG))).state_dict().items():
            draws.setdefault(name, []).append(p.detach().double().numpy())
    out = {}
    for name, arrays in draws.items():
        a = np.stack(arrays)
        out[name] = {"shape": list(arrays[0].shape), "mean": float(a.mean()),
                     "std": float(a.std()), "max_abs": float(np.abs(a).max())}
    return {"cfg": dict(CFG), "seeds": INIT_SEEDS, "torch": torch.__version__, "entries": out}


def _wave(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLES) / 16000.0
    waves = []
    for f0, amp in ((220.0, 0.3), (587.0, 0.1)):
        w = amp * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
        w += 0.02 * rng.standard_normal(SAMPLES)
        w[SAMPLES // 3: SAMPLES // 3 + 1600] *= 1e-3  # a quiet stretch near the log floor
        waves.append(np.clip(np.round(w * 32768), -32768, 32767))
    return np.stack(waves).astype(np.int16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path,
                        help="directory of the reference BEATs.py, backbone.py, modules.py")
    parser.add_argument("--out", required=True, type=Path, help="fixture directory")
    parser.add_argument("--kaldi", type=Path, default=None,
                        help="torchaudio's compliance/kaldi.py, when torchaudio cannot load")
    parser.add_argument("--init-only", action="store_true",
                        help="write only init_stats.json (the reference's initialisation)")
    args = parser.parse_args(argv)
    import torch

    if args.init_only:
        BEATs, BEATsConfig, _, _ = import_reference(args.reference, args.kaldi)
        args.out.mkdir(parents=True, exist_ok=True)
        stats = init_stats(BEATs, BEATsConfig)
        (args.out / "init_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        print(f"wrote {args.out}/init_stats.json: {len(stats['entries'])} entries")
        return 0
    if args.kaldi is None:
        try:
            import torchaudio.compliance.kaldi  # noqa: F401  (the fixtures need the real fbank)
        except Exception:  # noqa: BLE001
            raise SystemExit("torchaudio cannot be imported here: pass --kaldi=PATH to "
                             "torchaudio's compliance/kaldi.py") from None
    BEATs, BEATsConfig, backbone, kaldi_note = import_reference(args.reference, args.kaldi)
    torch.manual_seed(SEED)
    model = BEATs(BEATsConfig(dict(CFG)))
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # every weight random, LayerNorm scales and gains around 1
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            around_one = name.endswith(("norm.weight", "weight_g", "grep_a"))
            p.copy_((1.0 + 0.2 * noise) if around_one else 0.1 * noise)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": dict(CFG), "model": model.state_dict()}, args.out / "checkpoint.pt")

    wave_int16 = _wave(np.random.default_rng(SEED))
    wave = torch.from_numpy(wave_int16.astype(np.float32) / 32768.0)
    with torch.no_grad():
        fbank = model.preprocess(wave[:1])
        fbank_pafa = model.preprocess(wave[:1] / 2 ** 15)
        tokens, _ = model.extract_features(wave)
    out = {"wave_int16": wave_int16, "fbank": fbank.numpy(), "fbank_pafa": fbank_pafa.numpy(),
           "tokens": tokens.numpy()}
    distances = torch.arange(-1000, 1001)
    for num, far in BUCKETS:
        attn = backbone.MultiheadAttention(64, 4, self_attention=True,
                                           has_relative_attention_bias=True,
                                           num_buckets=num, max_distance=far)
        out[f"buckets_{num}_{far}"] = attn._relative_positions_bucket(distances).numpy().astype(
            np.int16)
    out["versions"] = np.array(json.dumps({"torch": torch.__version__, "kaldi": kaldi_note}))
    np.savez_compressed(args.out / "reference.npz", **out)
    (args.out / "init_stats.json").write_text(json.dumps(init_stats(BEATs, BEATsConfig),
                                                         indent=1) + "\n")
    print(f"wrote {args.out}/checkpoint.pt, init_stats.json, reference.npz: "
          + ", ".join(f"{k} {v.shape}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
