"""Inference for tools/benchmark.py (`predict`): resp_jax.predict on one recording against the
PyTorch reference forward of the same model, in the same process.

    python tools/benchmark.py predict [--model=cnn6|ast|beats|all] [--seconds=30]
        [--rounds=5] [--reference=DIR] [--quick]  # DIR: microsoft/unilm's beats/ (BEATs)

For each model, full size with random weights (configs/ce.py's CNN6 on 8 s log-mel,
configs/ast_ce.py's AST-base on 8 s fbank, configs/beats_ce.py's BEATs-base on 5 s fbank):
a `finished_run.TrainedRun` is built in memory and `predict.predict` classifies a
``--seconds`` recording (written once as a 16 kHz WAV: noise with a breathing-like envelope)
(``--quick``: the configs' tiny `quick` models, a check of the command rather than a figure)
in its sliding windows (the run's clip length, half a clip's hop), as
`python -m resp_jax.predict --wav=FILE` does. Timed in alternating rounds, after a warm-up
that compiles:

- ``predict``: `predict.predict` end to end (reading, cutting, features, batching, forward);
  ``predict_ms_per_window``: that over the number of windows.
- ``forward``: the jitted forward pass on the recording's window batch alone, and
  ``torch_forward``, the reference model's on the same inputs (CNN6: tools/torch_reference.py
  + a Linear head; AST: transformers' ASTForAudioClassification; BEATs: the reference
  BEATs + Linear on every token, averaged), eval mode, ``torch.no_grad``.
- ``window``, ``torch_window``: one window (batch 1), the latency of a single window.

Ratios (> 1: JAX faster) are medians of per-round ratios with their spread: the batch's
forward, the single window's, and ``predict_jax_over_torch``, the recording through the same
preprocessing with the reference's forward in place of JAX's (predict - forward +
torch_forward, per round) over predict.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

CONFIGS = {"cnn6": "ce", "ast": "ast_ce", "beats": "beats_ce"}
MODELS = tuple(CONFIGS)


def write_recording(path: Path, seconds: float, sample_rate: int = 16000) -> None:
    """A ``seconds`` long mono WAV: noise shaped by a 0.25 Hz breathing envelope."""
    import numpy as np
    import soundfile

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(0)
    wave = 0.1 * rng.standard_normal(t.size) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
    soundfile.write(str(path), wave.astype(np.float32), sample_rate)


def random_run(bench, name: str, workdir: Path, quick: bool = False):
    """A `finished_run.TrainedRun` of configs/<CONFIGS[name]>.py (``quick``: its `quick`
    preset) with random weights."""
    import jax
    import numpy as np

    from resp_jax import configuration, finished_run
    from resp_jax.data import features, metadata
    from resp_jax.models import build_model

    config = configuration.resolve(bench.config_for(CONFIGS[name], "quick" if quick else None))
    model = build_model(config, len(metadata.schema(config.data).classes))
    variables = model.init(jax.random.key(0), np.zeros((1,) + features.input_shape(config),
                                                       np.float32), train=False)
    variables = {"params": variables["params"],
                 "batch_stats": variables.get("batch_stats", {})}
    # a log-mel run's standardisation constants (fbank front ends use fixed ones)
    return finished_run.TrainedRun(workdir=workdir, config=config, results={"norm": [-5., 4.]},
                                   model=model, variables=variables)


class TorchForward:
    """The reference model's inference forward on a fixed batch ``x`` ([n, *input_shape],
    resp_jax's layout) and on its first row."""

    def __init__(self, name: str, config, x, reference: str):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        classes = 4
        if name == "cnn6":
            import torch_reference

            encoder = torch_reference.CNN6(tuple(config.model.channels))
            head = torch.nn.Linear(int(config.model.channels[-1]), classes)
            self.model = torch.nn.Sequential(encoder, head)
            inputs = torch.from_numpy(x)                      # [n, mel, frames]
        elif name == "ast":
            from transformers import ASTConfig, ASTForAudioClassification

            m = config.model
            cfg = ASTConfig(hidden_size=int(m.width), num_hidden_layers=int(m.depth),
                            num_attention_heads=int(m.heads),
                            intermediate_size=4 * int(m.width), max_length=x.shape[2],
                            frequency_stride=int(m.fstride), time_stride=int(m.tstride),
                            num_mel_bins=x.shape[1], num_labels=classes)
            ast = ASTForAudioClassification(cfg)
            self.model = lambda v: ast(v).logits
            self.module = ast
            inputs = torch.from_numpy(x).transpose(1, 2).contiguous()  # [n, frames, bins]
        else:
            import beats_benchmark
            import beats_reference

            BEATs, BEATsConfig, _, _ = beats_reference.import_reference(reference)
            beats = BEATs(BEATsConfig(beats_benchmark.reference_cfg(config)))
            beats.preprocess = lambda source, **kw: source  # inputs are fbank already
            head = torch.nn.Linear(int(config.model.width), classes)
            self.model = lambda v: head(beats.extract_features(v)[0]).mean(dim=1)
            self.module = torch.nn.ModuleList([beats, head])
            inputs = torch.from_numpy(x).transpose(1, 2).contiguous()  # [n, frames, bins]
        getattr(self, "module", self.model).eval()
        self.x, self.one = inputs, inputs[:1].contiguous()

    def batch(self):
        with self.torch.no_grad():
            return self.model(self.x)

    def window(self):
        with self.torch.no_grad():
            return self.model(self.one)


def one_model(bench, args, name: str, wav: Path, workdir: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resp_jax import finished_run, predict
    from resp_jax.data import audio
    from resp_jax.models.heads import inputs

    run = random_run(bench, name, workdir, args.quick)
    sr = int(run.config.data.sample_rate)
    clip = float(run.config.data.duration)
    wave, rows = predict.segments(str(wav), None, clip, clip / 2, run.classes, sr)
    cuts = [audio.cut(wave, r["start"], r["end"], sr, audio.fade_length(sr)) for r in rows]
    (first,) = list(run.wave_batches(cuts, source=str(wav)))  # one batch: <= eval.batch_size
    n = len(rows)
    used = finished_run.inference_rows(n, len(first["mask"]))
    x = np.array(first["x"][:used])  # a writable copy, for torch.from_numpy
    xj, one = jnp.asarray(x), jnp.asarray(x[:1])
    extra = inputs(run.model, {k: np.asarray(v)[:used] for k, v in first.items()})

    def forward(variables, x):  # what predict runs on each batch
        return run._forward(variables, x, extra)
    ref = TorchForward(name, run.config, x, args.reference)
    runners = {"predict": (lambda: predict.predict(run, [str(wav)]), lambda out: None),
               "forward": (lambda: forward(run.variables, xj), jax.block_until_ready),
               "torch_forward": (ref.batch, lambda out: None),
               "window": (lambda: forward(run.variables, one), jax.block_until_ready),
               "torch_window": (ref.window, lambda out: None)}
    for fn, sync in runners.values():  # compile / warm up
        bench._timed(fn, sync, 1)
    times = bench.round_seconds(runners, args.rounds, 1, getattr(args, "sampler", None))
    ratios = bench.bench_conditions.round_ratios
    median = {k: statistics.median(v) for k, v in times.items()}
    with_torch = [p - f + t for p, f, t in zip(times["predict"], times["forward"],
                                               times["torch_forward"])]
    sig = bench._sig
    batch = ratios(times["torch_forward"], times["forward"])
    window = ratios(times["torch_window"], times["window"])
    end_to_end = ratios(with_torch, times["predict"])
    m = run.config.model
    return {"model": name, "config": f"configs/{CONFIGS[name]}.py",
            "size": list(m.channels) if name == "cnn6" else [int(m.width), int(m.depth)],
            "clip_s": clip, "windows": n, "batch_rows": used,
            "input_shape": list(x.shape[1:]),
            "predict_s": sig(median["predict"]),
            "predict_ms_per_window": sig(1000 * median["predict"] / n),
            "forward_ms": sig(1000 * median["forward"]),
            "torch_forward_ms": sig(1000 * median["torch_forward"]),
            "jax_over_torch": batch.pop("median"), "jax_over_torch_rounds": batch,
            "window_ms": sig(1000 * median["window"]),
            "torch_window_ms": sig(1000 * median["torch_window"]),
            "window_jax_over_torch": window.pop("median"),
            "window_jax_over_torch_rounds": window,
            "predict_jax_over_torch": end_to_end.pop("median"),
            "predict_jax_over_torch_rounds": end_to_end}


def run(bench, args) -> dict:
    import jax

    models = MODELS if args.model == "all" else (args.model,)
    if "beats" in models and not args.reference:
        raise SystemExit("predict with BEATs compares the reference BEATs: pass "
                         "--reference=DIR (the directory of microsoft/unilm's beats/BEATs.py), "
                         "or --model=cnn6|ast")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "recording.wav"
        write_recording(wav, args.seconds)
        out = [one_model(bench, args, name, wav, Path(tmp)) for name in models]
    return {"benchmark": "predict", "seconds": args.seconds, "rounds": args.rounds,
            "quick": args.quick,
            "platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
            "models": out}
