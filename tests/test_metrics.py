"""Challenge metrics on hand-computed confusion matrices (docs/method.md §6)."""

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from resp_jax import metrics

# ICBHI, rows true, columns predicted (normal, crackle, wheeze, both):
#   normal  [50, 10,  5,  5]   70 normal cycles, 50 right          -> Sp = 50/70 = 71.43 %
#   crackle [12, 20,  3,  5]   40, 20 right
#   wheeze  [ 6,  2, 10,  2]   20, 10 right
#   both    [ 4,  2,  4, 10]   20, 10 right (a 'both' called 'crackle' is a miss)
# Se = (20 + 10 + 10) / (40 + 20 + 20) = 40/80 = 50 %; Score = (500/7 + 50)/2 = 60.71 %;
# HS = 2 * 50 * 500/7 / (50 + 500/7) = 50000/850 = 58.82 %.
ICBHI_CM = np.array([[50, 10, 5, 5],
                     [12, 20, 3, 5],
                     [6, 2, 10, 2],
                     [4, 2, 4, 10]])

# SPRSound (Normal, Rhonchi, Wheeze, Stridor, Coarse C., Fine C., Wheeze+Crackle):
#   N   [80, 2,  5, 0, 3, 10, 0]   100, 80 right -> Sp = 80 %
#   Rh  [ 1, 3,  1, 0, 0,  0, 0]     5,  3
#   W   [ 4, 1, 10, 0, 0,  0, 5]    20, 10
#   St  [ 0, 0,  1, 1, 0,  0, 0]     2,  1
#   CC  [ 2, 0,  0, 0, 2,  1, 0]     5,  2
#   FC  [ 8, 0,  0, 0, 2, 20, 0]    30, 20
#   WC  [ 1, 0,  2, 0, 0,  1, 4]     8,  4
# Se = 40/70 = 57.14 %; Score = (80 + 400/7)/2 = 480/7 = 68.57 %;
# HS = 2 * 80 * 400/7 / (80 + 400/7) = 64000/960 = 200/3 = 66.67 %;
# SPRSound score = (480/7 + 200/3)/2 = 1420/21 = 67.62 %.
SPR_CM = np.array([[80, 2, 5, 0, 3, 10, 0],
                   [1, 3, 1, 0, 0, 0, 0],
                   [4, 1, 10, 0, 0, 0, 5],
                   [0, 0, 1, 1, 0, 0, 0],
                   [2, 0, 0, 0, 2, 1, 0],
                   [8, 0, 0, 0, 2, 20, 0],
                   [1, 0, 2, 0, 0, 1, 4]])


def expand(cm):
    """Per-cycle (true, predicted) lists with the counts of ``cm``, shuffled."""
    t, p = [], []
    for i, row in enumerate(cm):
        for j, k in enumerate(row):
            t += [i] * int(k)
            p += [j] * int(k)
    order = np.random.default_rng(0).permutation(len(t))
    return np.array(t)[order], np.array(p)[order]


def test_confusion_matrix_small_hand_case():
    y_true = [0, 0, 1, 2, 3, 3, 1]
    y_pred = [0, 1, 1, 3, 3, 0, 1]
    want = [[1, 1, 0, 0],
            [0, 2, 0, 0],
            [0, 0, 0, 1],
            [1, 0, 0, 1]]
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred, 4), want)


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    np.testing.assert_array_equal(metrics.confusion_matrix(t, p, 7),
                                  sk_confusion_matrix(t, p, labels=range(7)))


def test_mask_excludes_padding_whatever_it_holds():
    t, p = expand(ICBHI_CM)
    t_pad = np.concatenate([t, [-1, 0, 99]])
    p_pad = np.concatenate([p, [3, 7, 0]])
    mask = np.concatenate([np.ones(len(t)), np.zeros(3)]).astype(np.float32)
    np.testing.assert_array_equal(metrics.confusion_matrix(t_pad, p_pad, 4, mask), ICBHI_CM)


def test_icbhi_scores():
    s = metrics.scores(ICBHI_CM, "icbhi")
    assert s["sp"] == pytest.approx(100 * 50 / 70)
    assert s["se"] == pytest.approx(50.0)
    assert s["score"] == pytest.approx((500 / 7 + 50) / 2)
    assert s["hs"] == pytest.approx(50000 / 850)
    assert s["recall"] == pytest.approx([500 / 7, 50.0, 50.0, 50.0])
    assert s["support"] == [70, 40, 20, 20]
    assert "sprsound_score" not in s


def test_sprsound_scores_via_summarize():
    t, p = expand(SPR_CM)
    s = metrics.summarize(t, p, np.ones(len(t)), "sprsound")
    assert s["confusion_matrix"] == SPR_CM.tolist()
    assert s["sp"] == pytest.approx(80.0)
    assert s["se"] == pytest.approx(400 / 7)
    assert s["score"] == pytest.approx(480 / 7)
    assert s["hs"] == pytest.approx(200 / 3)
    assert s["sprsound_score"] == pytest.approx(1420 / 21)
    assert s["recall"] == pytest.approx([80, 60, 50, 50, 40, 100 * 20 / 30, 50])


def test_empty_classes_give_zero_not_nan():
    # No normal cycle: Sp = 0 by definition, Se from the abnormal rows (3 of 4 right).
    cm = np.array([[0, 0, 0, 0],
                   [0, 2, 0, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]])
    s = metrics.scores(cm, "icbhi")
    assert s["sp"] == 0.0 and s["se"] == pytest.approx(75.0)
    assert s["score"] == pytest.approx(37.5)
    assert s["hs"] == 0.0  # 2 * 75 * 0 / 75
    assert s["recall"] == pytest.approx([0.0, 100.0, 50.0, 0.0])
    assert s["support"] == [0, 2, 2, 0]
    # Nothing at all (e.g. an empty split): every score 0, HS's 0/0 included.
    s = metrics.scores(np.zeros((7, 7), int), "sprsound")
    values = [s["sp"], s["se"], s["score"], s["hs"], s["sprsound_score"], *s["recall"]]
    assert all(v == 0.0 and not math.isnan(v) for v in values)
    # Only normal cycles, all right: Se = 0 (no abnormal cycle), HS = 0.
    s = metrics.scores(np.diag([5, 0, 0, 0]))
    assert (s["sp"], s["se"], s["score"], s["hs"]) == (100.0, 0.0, 50.0, 0.0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"y_true\[2\] = 4 is not a class index in \[0, 4\)"):
        metrics.confusion_matrix([0, 1, 4], [0, 1, 2], 4)
    with pytest.raises(ValueError, match=r"y_pred\[1\] = -1"):
        metrics.confusion_matrix([0, 1, 2], [0, -1, 2], 4, mask=[1, 1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.confusion_matrix([0, 1], [0], 4)
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.confusion_matrix([0.5, 1.0], [0, 1], 4)
    # Classes are the run's: SPRSound's binary task 1-1 scores a 2 x 2 matrix, challenge
    # score included (docs/method.md §13.3).
    binary = metrics.scores([[8, 2], [1, 9]], "sprsound")
    assert (binary["sp"], binary["se"]) == (80.0, 90.0) and "sprsound_score" in binary
    with pytest.raises(ValueError, match="unknown dataset 'esc50'"):
        metrics.scores(ICBHI_CM, "esc50")
    with pytest.raises(ValueError, match="needs num_classes or dataset"):
        metrics.summarize([0], [0])
