"""Makes the OPERA-CT parity fixtures of tests/test_htsat_parity.py with the reference code.

    PYTHONPATH=. python tools/make_opera_fixtures.py --reference=OPERA_ROOT \
        --out=tests/fixtures/opera

``--reference``: the root of an evelyn0414/OPERA checkout (its ``src/model/htsat`` and
``src/util.py`` are imported from there by tools/opera_reference.py; nothing is copied here).
OPERA's htsat.py needs torchlibrosa (0.1.0, as OPERA pins it).

Writes to ``--out``:
  encoder-tiny.ckpt  a tiny random OPERA-CT in the layout of OPERA's released
                     encoder-operaCT.ckpt: a Lightning checkpoint dict whose ``state_dict``
                     holds the Cola model's entries (``encoder.encoder.htsat.*``: HTS-AT with
                     its unused torchlibrosa STFT / mel buffers, token-semantic head and
                     AudioSet head; ``g``, ``layer_norm``, ``linear``: the contrastive
                     projection) and ``hyper_parameters`` with encoder 'htsat'. The HTS-AT is
                     HTSAT_Swin_Transformer(spec_size 64, patch 4 / stride 4, embed 8, depths
                     (2, 2), heads (2, 4), window 4, 5 classes) on 16 mel bins, its config
                     module's window_size (n_fft) 64 and mel_bins 16 so the buffers stay
                     small; every weight random, bn0's running statistics too;
  reference.npz      x [2, 50, 16] (the model input: frames x mel), latent [2, 16],
                     clipwise [2, 5], framewise [2, 1024, 5] (HTSAT_Swin_Transformer in eval
                     mode, OPERA's forward), and the front end: wave [2, 20000] (1.25 s at
                     16 kHz, float32) and mel [2, 40, 64] (pre_process_audio_mel_t(wave,
                     f_max=8000), OPERA's feature extraction), with the versions used.
"""

from __future__ import annotations

import argparse
import types
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opera_reference import import_reference  # noqa: E402

TINY = {"spec_size": 64, "patch_size": 4, "patch_stride": (4, 4), "num_classes": 5,
        "embed_dim": 8, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}
MEL, FRAMES, SAMPLES, SEED = 16, 50, 20000, 0


def waves(rng: np.random.Generator) -> np.ndarray:
    """Two 16 kHz test waves: tones with a slow envelope, noise, and a near-silent stretch."""
    t = np.arange(SAMPLES) / 16000.0
    out = []
    for f0, amp in ((300.0, 0.3), (1250.0, 0.05)):
        w = amp * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t))
        w += 0.01 * rng.standard_normal(SAMPLES)
        w[SAMPLES // 2: SAMPLES // 2 + 2000] *= 1e-4
        out.append(w)
    return np.stack(out).astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="OPERA checkout root")
    parser.add_argument("--out", required=True, type=Path, help="fixture directory")
    args = parser.parse_args(argv)
    import librosa
    import torch

    htsat, config, mel_fn = import_reference(args.reference)
    cfg = types.SimpleNamespace(**{k: v for k, v in vars(config).items()
                                   if not k.startswith("__")})  # the module's fields,
    cfg.mel_bins, cfg.window_size, cfg.hop_size = MEL, 64, 32     # small STFT buffers
    torch.manual_seed(SEED)
    model = htsat.HTSAT_Swin_Transformer(config=cfg, **TINY)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # torchlibrosa's frozen STFT / mel
                continue
            noise = torch.randn(p.shape, generator=generator)
            around_one = name.endswith("weight") and p.ndim == 1  # LayerNorm / BN scales
            p.copy_((1.0 + 0.2 * noise) if around_one else 0.2 * noise)
        model.bn0.running_mean.copy_(torch.randn(MEL, generator=generator))
        model.bn0.running_var.copy_(0.5 + torch.rand(MEL, generator=generator))
    model.eval()
    state = {"encoder.encoder.htsat." + k: v for k, v in model.state_dict().items()}
    width = TINY["embed_dim"] * 2 ** (len(TINY["depths"]) - 1)
    head = {"g.weight": torch.randn(16, width, generator=generator), "g.bias": torch.zeros(16),
            "layer_norm.weight": torch.ones(16), "layer_norm.bias": torch.zeros(16),
            "linear.weight": torch.randn(16, 16, generator=generator)}
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.2.0.post0",
                  "state_dict": {**state, **head},
                  "hyper_parameters": {"p": 0.1, "dim_fea": 1280, "dim_hidden": 1280,
                                       "dim_out": 16, "encoder": "htsat", "max_len": 251,
                                       "out_emb": 2048}}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out / "encoder-tiny.ckpt")

    rng = np.random.default_rng(SEED)
    x = (3.0 * rng.standard_normal((2, FRAMES, MEL))).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x)[:, None])
    wave = waves(rng)
    mel = np.stack([mel_fn(w, f_max=8000) for w in wave]).astype(np.float32)
    np.savez_compressed(
        args.out / "reference.npz", x=x, latent=out["latent_output"].numpy(),
        clipwise=out["clipwise_output"].numpy(), framewise=out["framewise_output"].numpy(),
        wave=wave, mel=mel, tiny=np.array(json.dumps(TINY)),
        versions=np.array(json.dumps({"torch": torch.__version__,
                                      "librosa": librosa.__version__})))
    print(f"wrote {args.out}/encoder-tiny.ckpt, reference.npz: latent "
          f"{tuple(out['latent_output'].shape)}, mel {mel.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
