"""The AST train step for tools/benchmark.py (`train-step --model=ast`), and transformers'.

    python tools/benchmark.py train-step --model=ast --ast-size=tiny|small|base [--method=ce]
        [--batch=8] [--frames=798] [--dtype=float32|bfloat16] [--remat=auto|none|attention|block]
        [--attention=auto|xla|cudnn] [--vs-torch] [--compile-only]

JAX: the jitted train step of configs/ast_<method>.py (ce: configs/ast_ce.py; patchmix_cl,
mscl; the other methods on configs/ast_ce.py with that method) with a DeiT-sized encoder
(tiny 192 / small 384 / base 768 wide, depth 12, width / 64 heads) on random fbank inputs
[batch, 128, frames], after compilation, synchronised, median of rounds.

`--vs-torch` (method ce): Hugging Face transformers' ASTForAudioClassification of the same
size (its LayerNorm + Linear head, like configs/ast_ce.py's classifier) on the same batch:
forward, cross-entropy, backward, torch.optim.Adam(lr 5e-5, weight_decay 1e-6): the step of
the AST fine-tuning recipe, timed in the same process, alternating rounds with the JAX step;
prints jax/torch (> 1: JAX faster).

The JSON also holds the step's FLOPs (XLA's cost analysis of the step with its blocks unrolled
and nothing recomputed), its memory (XLA's buffer assignment: arguments + outputs +
temporaries - donated), and an estimate of the recipe's
50 epochs on ICBHI (4142 training cycles at this batch, the 2756 test cycles evaluated every
epoch) on this device at the measured speed. `--compile-only` reports the FLOPs and memory
without running a step (e.g. the base model in bfloat16 on a CPU, for a GPU estimate).
"""

from __future__ import annotations


SIZES = {"tiny": 192, "small": 384, "base": 768}  # DeiT widths; depth 12, width / 64 heads
ICBHI_TRAIN, ICBHI_TEST, AST_EPOCHS = 4142, 2756, 50


def _config(bench, args):
    name = {"ce": "ast_ce", "patchmix_cl": "ast_patchmix_cl", "mscl": "ast_mscl"}.get(
        args.method, "ast_ce")
    config = bench.config_for(name)
    config.method = args.method
    if args.method in ("scl", "hybrid"):
        config.loss.heads = (("label", 1.0),)
    elif args.method == "simclr":
        config.loss.heads = (("instance", 1.0),)
    width = SIZES[args.ast_size]
    config.model.update(width=width, depth=args.depth, heads=width // 64, dtype=args.dtype,
                        remat=args.remat, attention=args.attention)
    config.train.batch_size = args.batch
    config.train.weight_average = 0.0  # transformers' step has none: time the same work
    config.data.duration = (args.frames - 1) * 0.01 + 0.025  # Kaldi: 1 + (n - 400) // 160
    return config


class TorchASTStep:
    """transformers' ASTForAudioClassification fine-tuning step on a fixed random batch."""

    def __init__(self, width: int, batch: int, frames: int, dtype: str):
        import torch
        from transformers import ASTConfig, ASTForAudioClassification

        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = ASTConfig(hidden_size=width, num_hidden_layers=12,
                           num_attention_heads=width // 64, intermediate_size=4 * width,
                           max_length=frames, num_mel_bins=128, num_labels=4)
        self.model = ASTForAudioClassification(config).to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-5, weight_decay=1e-6)
        self.x = torch.randn(batch, frames, 128, device=self.device)
        self.y = torch.randint(0, 4, (batch,), device=self.device)
        self.autocast = dtype == "bfloat16"

    def __call__(self):
        torch = self.torch
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(self.x).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def sync(self, _=None):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def run(bench, args) -> dict:
    import jax
    import jax.numpy as jnp

    from resp_jax import configuration, optim, steps
    from resp_jax.data import features

    if args.vs_torch and args.method != "ce":
        raise SystemExit("--vs-torch with --model=ast compares the fine-tuning (ce) step with "
                         "transformers' ASTForAudioClassification: use --method=ce")
    config = configuration.resolve(_config(bench, args))
    shape = features.input_shape(config)
    assert shape == (128, args.frames), shape
    mesh, model, state, step, eval_step = bench.step_setup(config, shape)

    batch, eval_batch, host = bench.random_batches(config, mesh, args.batch, shape)
    compiled = step.lower(state, batch).compile()
    # XLA counts a loop body once: the FLOPs are those of the unrolled step, before optimisation.
    flat = model.clone(encoder=model.encoder.clone(scan=False, remat="none"))
    tx = optim.make_optimizer(config, steps_per_epoch=100)  # step_setup's (the same chain)
    flops = steps.make_train_step(flat, tx, config, None, mesh, optim.schedule(config, 100)) \
        .lower(state, batch).cost_analysis().get("flops")
    memory = compiled.memory_analysis()  # XLA's buffer assignment for this device
    memory_gb = round((memory.argument_size_in_bytes + memory.output_size_in_bytes
                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 1e9, 3) \
        if memory is not None else None
    if args.compile_only:  # FLOPs and memory of the step, nothing timed
        return {"benchmark": "train-step", "model": "ast", "ast_size": args.ast_size,
                "method": args.method, "batch": args.batch, "frames": args.frames,
                "dtype": args.dtype, "platform": jax.devices()[0].platform,
                "step_gflop": bench._sig(flops / 1e9) if flops else None,
                "step_memory_gb": memory_gb}
    variables = jax.tree.map(jnp.copy, {"params": state.params,
                                        "batch_stats": state.batch_stats})
    if "classifier" not in variables["params"]:  # two-stage: a classifier for the forward
        variables = model.init(jax.random.key(1), host["view1"][:1], train=False)
    others = {"forward": (lambda: eval_step(variables, eval_batch), jax.block_until_ready)}
    if args.vs_torch:
        ref = TorchASTStep(SIZES[args.ast_size], args.batch, args.frames, args.dtype)
        others["torch"] = (ref, ref.sync)
    median, fields = bench.speed(bench.time_steps(step, state, batch, others, args),
                                 args.batch)
    steps_per_epoch = -(-ICBHI_TRAIN // args.batch)
    evals = -(-ICBHI_TEST // args.batch)
    recipe_h = AST_EPOCHS * (steps_per_epoch * median["jax"] + evals * median["forward"]) / 3600
    out = {"benchmark": "train-step", "model": "ast", "ast_size": args.ast_size,
           "remat": args.remat, "attention": args.attention,
           "width": config.model.width, "depth": config.model.depth,
           "heads": config.model.heads, "method": args.method, "batch": args.batch,
           "frames": args.frames, "grid": list(model.encoder.grid), "dtype": args.dtype,
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
           **fields,
           "step_gflop": bench._sig(flops / 1e9) if flops else None,
           "achieved_tflops": bench._sig(flops / median["jax"] / 1e12) if flops else None,
           "projected_icbhi_50_epochs_h": round(recipe_h, 2), "step_memory_gb": memory_gb}
    return out
