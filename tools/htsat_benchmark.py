"""The HTS-AT train step for tools/benchmark.py (`train-step --model=htsat`), and the
reference's.

    python tools/benchmark.py train-step --model=htsat [--htsat-size=tiny|base] [--batch=8]
        [--dtype=float32|bfloat16] [--vs-torch]

JAX: the jitted train step of configs/clap_ce.py (BTS's recipe: Adam with L2, the per-step
weight average 0.5, CLAP's projection and a Linear classifier) with CLAP's HTS-AT ('base': the
published sizes, 96 / (2, 2, 6, 2) / (4, 8, 16, 32), window 8, 256 x 256 image; 'tiny':
configs' `htsat_quick`), from scratch, on random log-mels [batch, 64, 1001] (CLAP's 10 s),
after compilation, synchronised, median of rounds.

`--vs-torch`: transformers' ``ClapAudioModelWithProjection`` (the model BTS fine-tunes,
models/clap.py) with the same ClapAudioConfig sizes, in training mode, on the same batch:
audio_embeds -> Linear(512, 4) -> cross-entropy -> backward -> torch.optim.Adam(lr 5e-5,
weight_decay 1e-6) -> every parameter 0.5 x before + 0.5 x after (BTS's main.py ``train``),
timed in the same process, alternating rounds with the JAX step; prints jax/torch (> 1: JAX
faster). Both sides use the same thread count (torch.set_num_threads is left at its default
and XLA uses every core: compare on an idle machine only).
"""

from __future__ import annotations

from beats_benchmark import AveragedCEStep  # BTS's step averages its weights as PAFA's does

ICBHI_TRAIN, ICBHI_TEST, BTS_EPOCHS = 4142, 2756, 50


def _config(bench, args):
    config = bench.config_for("clap_ce", "quick" if args.htsat_size == "tiny" else None)
    config.model.dtype = args.dtype
    config.train.batch_size = args.batch
    return config


class TorchClapStep(AveragedCEStep):
    """BTS's audio-CLAP CE step with transformers' ClapAudioModelWithProjection."""

    def __init__(self, m, batch: int, frames: int, dtype: str):
        import torch
        import transformers

        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        h = m.htsat
        audio = transformers.ClapAudioConfig(
            window_size=h.window_size, num_mel_bins=h.num_mel_bins, spec_size=h.spec_size,
            patch_size=h.patch_size, patch_stride=[h.patch_stride] * 2,
            patch_embeds_hidden_size=h.embed_dim, depths=list(h.depths),
            num_attention_heads=list(h.heads), projection_dim=h.projection_dim,
            hidden_size=h.embed_dim * 2 ** (len(h.depths) - 1), hidden_dropout_prob=m.dropout,
            drop_path_rate=m.drop_path)
        self.model = transformers.ClapAudioModelWithProjection(audio).to(self.device).train()
        self.classifier = torch.nn.Linear(h.projection_dim, 4).to(self.device)
        self.params = list(self.model.parameters()) + list(self.classifier.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=5e-5, weight_decay=1e-6)
        self.x = torch.randn(batch, 1, frames, h.num_mel_bins, device=self.device)
        self.y = torch.randint(0, 4, (batch,), device=self.device)
        self.autocast = dtype == "bfloat16"

    def logits(self):
        return self.classifier(self.model(input_features=self.x).audio_embeds)


def run(bench, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax import configuration, parallel
    from resp_jax.data import features

    if args.method != "ce":
        raise SystemExit("--model=htsat times BTS's CE fine-tuning step: use --method=ce")
    config = configuration.resolve(_config(bench, args))
    shape = features.input_shape(config)
    mesh, model, state, step, eval_step = bench.step_setup(config, shape)
    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((args.batch,) + shape, np.float32),
            "label": rng.integers(0, 4, args.batch).astype(np.int32),
            "mask": np.ones(args.batch, np.float32)}
    batch = parallel.to_global(host, mesh)
    eval_batch = parallel.to_global({"x": host["view1"], "label": host["label"],
                                     "mask": host["mask"]}, mesh)
    step = step.lower(state, batch).compile()
    flops = step.cost_analysis().get("flops")
    variables = jax.tree.map(jnp.copy, {"params": state.params,
                                        "batch_stats": state.batch_stats})
    others = {"forward": (lambda: eval_step(variables, eval_batch), jax.block_until_ready)}
    if args.vs_torch:
        ref = TorchClapStep(config.model, args.batch, shape[1], args.dtype)
        others["torch"] = (ref, ref.sync)
    median, fields = bench.speed(bench.time_steps(step, state, batch, others, args),
                                 args.batch)
    steps_per_epoch = ICBHI_TRAIN // args.batch  # BTS drops the last partial batch
    evals = -(-ICBHI_TEST // args.batch)
    recipe_h = BTS_EPOCHS * (steps_per_epoch * median["jax"] + evals * median["forward"]) / 3600
    h = config.model.htsat
    out = {"benchmark": "train-step", "model": "htsat", "htsat_size": args.htsat_size,
           "embed_dim": h.embed_dim, "depths": list(h.depths), "heads": list(h.heads),
           "method": args.method, "batch": args.batch, "frames": shape[1], "dtype": args.dtype,
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
           **fields,
           "step_gflop": bench._sig(flops / 1e9) if flops else None,
           "achieved_tflops": bench._sig(flops / median["jax"] / 1e12) if flops else None,
           "projected_icbhi_50_epochs_h": round(recipe_h, 2)}
    return out
