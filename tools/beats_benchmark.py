"""The BEATs train step for tools/benchmark.py (`train-step --model=beats`), and the reference's.

    python tools/benchmark.py train-step --model=beats --beats-size=tiny|small|base
        [--method=ce|pafa] [--batch=32] [--frames=498] [--dtype=float32|bfloat16]
        [--vs-torch --reference=DIR]

JAX: the jitted train step of configs/beats_<method>.py (PAFA's recipe: Adam with L2, the
per-step weight average 0.5) with a BEATs of width 192 / 384 / 768, depth 12, width / 64
heads and the iter3+ layout (512-wide patch embedding, conv position embedding 128 / 16,
gated relative position bias, deep norm), from scratch, on random fbank inputs
[batch, 128, frames] (498 = PAFA's 5 s), after compilation, synchronised, median of rounds.

`--vs-torch --reference=DIR` (method ce): the reference implementation imported from DIR
(microsoft/unilm's beats/ folder: BEATs.py, backbone.py, modules.py; tools/beats_reference.py)
with the same cfg, in training mode, on the same fbank batch (its ``preprocess`` bypassed: the
fbank is computed once per run in resp_jax, inside every step in PAFA): tokens -> Linear(width,
4) per token -> mean over tokens -> cross-entropy -> backward -> torch.optim.Adam(lr 5e-5,
weight_decay 1e-6) -> every parameter 0.5 x before + 0.5 x after: PAFA's beats_ce step
(main.py ``train``), timed in the same process, alternating rounds with the JAX step; prints
jax/torch (> 1: JAX faster).

The JSON also holds the step's FLOPs (XLA's cost analysis) and an estimate of PAFA's 100
epochs on ICBHI (4142 training cycles at this batch, the 2756 test cycles every epoch) at
the measured speed on this device.
"""

from __future__ import annotations

SIZES = {"tiny": 192, "small": 384, "base": 768}  # widths; depth 12, width / 64 heads
ICBHI_TRAIN, ICBHI_TEST, PAFA_EPOCHS = 4142, 2756, 100


def _config(bench, args):
    config = bench.config_for(f"beats_{args.method}")
    width = SIZES[args.beats_size]
    config.model.update(width=width, depth=args.depth, heads=width // 64, dtype=args.dtype)
    config.train.batch_size = args.batch
    config.data.duration = (args.frames - 1) * 0.01 + 0.025  # Kaldi: 1 + (n - 400) // 160
    return config


def reference_cfg(config) -> dict:
    """The BEATsConfig fields of a resolved resp_jax config."""
    from resp_jax.models import beats

    m = config.model
    return {**{v: int(m[k]) for k, v in beats.SIZE_FIELDS.items()}, **dict(m.beats),
            "finetuned_model": False}


class AveragedCEStep:
    """A PyTorch CE step on a fixed batch whose weights are then averaged 0.5 / 0.5 with their
    values before it (PAFA's and BTS's --ma_update --ma_beta 0.5). Subclasses set torch,
    device, params, optimizer, x, y, autocast and define `logits`."""

    def __call__(self):
        torch = self.torch
        before = [p.detach().clone() for p in self.params]
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.logits()
        loss = torch.nn.functional.cross_entropy(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # --ma_update --ma_beta 0.5
            for p, old in zip(self.params, before):
                p.mul_(0.5).add_(old, alpha=0.5)
        return loss

    def sync(self, _=None):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class TorchBEATsStep(AveragedCEStep):
    """PAFA's beats_ce fine-tuning step with the reference BEATs on a fixed fbank batch."""

    def __init__(self, reference: str, cfg: dict, batch: int, frames: int, dtype: str):
        import torch

        import beats_reference

        BEATs, BEATsConfig, _, _ = beats_reference.import_reference(reference)
        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = BEATs(BEATsConfig(cfg)).to(self.device).train()
        self.model.preprocess = lambda source, **kw: source  # inputs are fbank already
        self.classifier = torch.nn.Linear(cfg["encoder_embed_dim"], 4).to(self.device)
        self.params = list(self.model.parameters()) + list(self.classifier.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=5e-5, weight_decay=1e-6)
        self.x = torch.randn(batch, frames, 128, device=self.device)
        self.y = torch.randint(0, 4, (batch,), device=self.device)
        self.autocast = dtype == "bfloat16"

    def logits(self):
        tokens, _ = self.model.extract_features(self.x)
        return self.classifier(tokens).mean(dim=1)


def run(bench, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax import configuration, parallel
    from resp_jax.data import features

    if args.vs_torch and (args.method != "ce" or not args.reference):
        raise SystemExit("--vs-torch with --model=beats compares PAFA's CE step with the "
                         "reference BEATs: use --method=ce and --reference=DIR (the directory "
                         "of microsoft/unilm's beats/BEATs.py)")
    config = configuration.resolve(_config(bench, args))
    shape = features.input_shape(config)
    assert shape == (128, args.frames), shape
    mesh, model, state, step, eval_step = bench.step_setup(config, shape)
    rng = np.random.default_rng(0)
    host = {"view1": rng.standard_normal((args.batch,) + shape, np.float32),
            "label": rng.integers(0, 4, args.batch).astype(np.int32),
            "patient": rng.integers(0, max(args.batch // 4, 2), args.batch).astype(np.int32),
            "mask": np.ones(args.batch, np.float32)}
    host = {k: v for k, v in host.items() if k in ("view1", "mask") + configuration.fields(config)}
    batch = parallel.to_global(host, mesh)
    eval_batch = parallel.to_global({"x": host["view1"], "label": host["label"],
                                     "mask": host["mask"]}, mesh)
    step = step.lower(state, batch).compile()  # compiled once, for its FLOPs and the timing
    flops = step.cost_analysis().get("flops")
    variables = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": {}})
    others = {"forward": (lambda: eval_step(variables, eval_batch), jax.block_until_ready)}
    if args.vs_torch:
        ref = TorchBEATsStep(args.reference, reference_cfg(config), args.batch, args.frames,
                             args.dtype)
        others["torch"] = (ref, ref.sync)
    median, fields = bench.speed(bench.time_steps(step, state, batch, others, args),
                                 args.batch)
    steps_per_epoch = ICBHI_TRAIN // args.batch  # PAFA drops the last partial batch
    evals = -(-ICBHI_TEST // args.batch)
    recipe_h = PAFA_EPOCHS * (steps_per_epoch * median["jax"] + evals * median["forward"]) / 3600
    tokens = (args.frames // 16) * (128 // 16)
    out = {"benchmark": "train-step", "model": "beats", "beats_size": args.beats_size,
           "width": config.model.width, "depth": config.model.depth,
           "heads": config.model.heads, "method": args.method, "batch": args.batch,
           "frames": args.frames, "tokens": tokens, "dtype": args.dtype,
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
           **fields,
           "step_gflop": bench._sig(flops / 1e9) if flops else None,
           "achieved_tflops": bench._sig(flops / median["jax"] / 1e12) if flops else None,
           "projected_icbhi_100_epochs_h": round(recipe_h, 2)}
    return out
