"""The per-run feature store: cycles shorter than one STFT window are reported once per split."""

import logging

import numpy as np
from ml_collections import ConfigDict

from resp_jax.data import feature_store, prepare

SR = 16000


def _config(pad="circular"):
    return ConfigDict({"data": {"duration": 0.5, "pad": pad, "sample_rate": SR}})


def _prepared(lengths):
    n = len(lengths)
    rng = np.random.default_rng(0)
    split = prepare.Split(audio=[rng.standard_normal(k).astype(np.float32) * 0.1 for k in lengths],
                          codes={"label": np.zeros(n, np.int32)},
                          stem=["101_1b1_Al_sc_Meditron"] * n, patient=["101"] * n,
                          index=np.arange(n, dtype=np.int32))
    return prepare.Prepared("icbhi", "/nowhere", {"train": split}, [])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "STFT window" in r.getMessage()]


def test_short_cycles_are_named_once_per_split(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        feats = feature_store.Features(_prepared([400, 4000, 1023, 1024, 8000, 30]), _config())
    assert feats["train"].x.shape[0] == 6
    (message,) = _warnings(caplog)
    assert message.startswith("train split: 3 cycle(s) shorter than one STFT window")
    assert "tiled" in message
    assert ("101_1b1_Al_sc_Meditron#0, 101_1b1_Al_sc_Meditron#2, "
            "101_1b1_Al_sc_Meditron#5") in message
    assert "#1" not in message and "#3" not in message


def test_many_short_cycles_are_counted_not_all_named(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        feature_store.Features(_prepared([100] * 25), _config(pad="zero"))
    (message,) = _warnings(caplog)
    assert "25 cycle(s)" in message and "zero-padded" in message
    assert f"({25 - feature_store.SHORT_NAMED} more)" in message
    assert message.count("#") == feature_store.SHORT_NAMED


def test_no_warning_without_short_cycles(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        feature_store.Features(_prepared([2000, 9000]), _config())
    assert not _warnings(caplog)
