"""A finished run loaded back for inference: its resolved config, model and selected weights.

`resp_jax.predict`, `resp_jax.embed` and `resp_jax.report` read a workdir through `load`, so
they rebuild the model with `models.build_model`, restore `ckpt/best` (the epoch that model
selection chose, classifier included) and preprocess with the run's own `pipeline` code: a
cycle is fitted, turned into the run's features (log-mel, min-maxed over its evaluation batch
and standardised; or fbank, normalised with AST's constants) exactly as the run's evaluation
did. Inference runs on one local device.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# What a finished run recorded (also read by configuration for model.init_run).
from resp_jax.data import metadata
from resp_jax.run_files import CONFIG_FILE, RESULTS_FILE, read_json  # noqa: F401


@dataclasses.dataclass
class TrainedRun:
    workdir: Path
    config: ml_collections.ConfigDict  # the resolved config the run recorded (config.json)
    results: dict                      # results.json: selected epoch, test metrics, norm
    model: Any                         # unbound flax model (models.build_model)
    variables: dict                    # {'params', 'batch_stats'} of the selected epoch

    @property
    def dataset(self) -> str:
        return self.config.data.name

    @property
    def schema(self) -> metadata.Schema:
        """Class names and metadata values, as the run recorded them (`metadata.schema`)."""
        return metadata.schema(self.config.data)

    @property
    def classes(self) -> tuple:
        return self.schema.classes

    @functools.cached_property
    def _forward(self):
        model = self.model

        def forward(variables, x, extra):
            feats = model.apply(variables, x, False, method="encode", **extra)
            logits = model.apply({"params": variables["params"]}, feats, method="classify")
            return feats, jax.nn.softmax(logits, axis=-1)

        return jax.jit(forward)

    @property
    def fields(self) -> tuple:
        """The fields a batch carries for this run (`configuration.fields`)."""
        from resp_jax import configuration
        return configuration.fields(self.config)

    def outputs(self, batches: Iterable[dict]) -> dict:
        """Encoder features [n, D], class probabilities [n, C], predictions [n] and labels
        [n] of evaluation batches (``x``, ``label``, ``mask``; a BTS run's sentence fields),
        padding rows dropped."""
        from resp_jax.models.heads import inputs

        feats, probs, labels = [], [], []
        for b in batches:
            keep = np.asarray(b["mask"]) > 0
            rows = inference_rows(int(keep.sum()), len(keep))
            b = {k: np.asarray(v)[:rows] for k, v in b.items()}  # padding rows come last
            f, p = self._forward(self.variables, jnp.asarray(b["x"]), inputs(self.model, b))
            keep = keep[:rows]
            feats.append(np.asarray(f)[keep])
            probs.append(np.asarray(p)[keep])
            labels.append(b["label"][keep])
        width = int(self.variables["params"]["classifier"]["linear"]["kernel"].shape[0])
        feats = np.concatenate(feats) if feats else np.zeros((0, width), np.float32)
        probs = np.concatenate(probs) if probs else np.zeros((0, len(self.classes)), np.float32)
        return {"features": feats, "probabilities": probs,
                "prediction": probs.argmax(axis=-1).astype(np.int32),
                "label": np.concatenate(labels) if labels else np.zeros(0, np.int32)}

    def inference_config(self) -> ml_collections.ConfigDict:
        """The run's config with the standardisation it used written out as constants, so
        inputs that are not the run's dataset are standardised the same way."""
        config = copy.deepcopy(self.config)
        norm = self.results.get("norm")
        if norm is None and config.data.norm != "reference":
            raise ValueError(f"{self.workdir / RESULTS_FILE} has no 'norm' entry (written by "
                             "runs since resp_jax 0.1), and this run standardised with its "
                             "dataset's statistics (data.norm='dataset'): train it again")
        if norm is not None:
            config.data.norm = "reference"
            config.data.norm_mean, config.data.norm_std = (float(v) for v in norm)
        return config

    def classify_waves(self, waves: Sequence[np.ndarray], labels=None, source: str = "",
                       codes: dict | None = None) -> dict:
        """`outputs` for cycles at the run's ``data.sample_rate`` from any recording (e.g. cut
        with `audio.cut`), fitted
        to the run's duration and batched ``eval.batch_size`` at a time in the given order.
        ``labels`` (int, -1 unknown) are passed through; ``codes``: base field -> one code
        for every cycle (a BTS run's metadata; a field not given is unknown, -1);
        ``source`` (the recording) names the cycles in warnings."""
        return self.outputs(self.wave_batches(waves, labels, source, codes))

    def wave_batches(self, waves: Sequence[np.ndarray], labels=None, source: str = "",
                     codes: dict | None = None):
        """The evaluation batches (``x``, ``label``, ``mask``, the run's fields)
        `classify_waves` classifies."""
        from resp_jax.data import feature_store, pipeline, prepare

        n = len(waves)
        labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        given = {f: np.full(n, (codes or {}).get(f, -1), np.int32)
                 for f in self.schema.stored_fields if f != "label"}
        split = prepare.Split(audio=list(waves), codes={**given, "label": labels},
                              stem=[source] * n, patient=[""] * n,
                              index=np.arange(n, dtype=np.int32))
        config = self.inference_config()
        feats = feature_store.Features(
            prepare.Prepared(self.dataset, "", {"new": split}, [], self.schema), config)
        return pipeline.eval_batches(feats, config, "new", fields=self.fields,
                                     global_batch=config.eval.batch_size)

    def split_outputs(self, data, split: str) -> dict:
        """`outputs` of a split of the run's dataset (``data`` from `run_data.load`), with
        the stem, patient, cycle index and every base metadata code of each cycle, in the
        order the run evaluated them (the prepared order)."""
        from resp_jax.data import pipeline

        name = data.test_split if split == "test" else split
        if name not in data.features.splits:
            raise ValueError(f"split {split!r} not in this {self.dataset} run; expected one of "
                             f"{sorted(set(data.features.splits) | {'test'})}")
        out = self.outputs(pipeline.eval_batches(data.features, self.config, name,
                                                 fields=self.fields,
                                                 global_batch=self.config.eval.batch_size))
        s = data.features[name]
        out.update(split=name, stem=np.asarray(s.stem), patient=np.asarray(s.patient),
                   index=np.asarray(s.index),
                   codes={k: np.asarray(v) for k, v in s.codes.items()})
        return out


def inference_rows(real: int, batch: int) -> int:
    """Rows of an evaluation batch worth running: its ``real`` rows (first; padding follows)
    rounded up to a power of two, at most ``batch``. A 30-s recording's 7 windows then cost 8
    rows instead of ``eval.batch_size`` (128), while at most log2(batch) + 1 shapes compile.
    Padding rows take no part in the batch min-max and the models classify rows independently
    at inference (BatchNorm uses its running statistics), so the outputs are the same."""
    return min(batch, 1 << max(real - 1, 0).bit_length())


def selected_encoder(workdir) -> dict:
    """``{'params'[, 'batch_stats']}`` of the encoder of a finished run's selected model
    (``model.init_run``: another run starts from it, or probes it)."""
    variables = load(workdir).variables
    out = {"params": variables["params"]["encoder"]}
    if variables.get("batch_stats", {}).get("encoder"):
        out["batch_stats"] = variables["batch_stats"]["encoder"]
    return out


def load(workdir) -> TrainedRun:
    """The selected model of the finished run in ``workdir`` (see the module docstring)."""
    from resp_jax import checkpoint, configuration
    from resp_jax.models import build_model
    from resp_jax.data import features

    workdir = Path(workdir)
    config = ml_collections.ConfigDict(read_json(workdir / CONFIG_FILE, "its config"))
    for key, value in configuration.ADDED_WITH.items():  # what an older run ran with
        section, name = key.split(".")
        if name not in config[section]:
            config[section][name] = value
    results = read_json(workdir / RESULTS_FILE, "the results of the finished run")
    prompts = None
    if config.method == "bts":  # the sentences' token ids it was trained with: no tokenizer
        from resp_jax import bts
        prompts = bts.read_prompts(workdir)
    model = build_model(config, len(metadata.schema(config.data).classes), prompts=prompts)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1,) + features.input_shape(config),
                                                 jnp.float32))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = {"batch_stats": {}, **shapes}  # saved even when empty (AST without BatchNorm)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
    if not (workdir / "ckpt" / checkpoint.BEST).is_dir():
        raise FileNotFoundError(f"{workdir}/ckpt/{checkpoint.BEST} not found: no selected "
                                "model was saved in this run directory")
    with checkpoint.Checkpoints(workdir) as ckpts:
        restored = ckpts.restore(checkpoint.BEST, target)
    if restored is None:
        raise FileNotFoundError(f"{ckpts.path(checkpoint.BEST)} holds no checkpoint")
    return TrainedRun(workdir=workdir, config=config, results=results, model=model,
                      variables=restored[0])
