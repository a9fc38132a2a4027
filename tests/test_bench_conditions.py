"""tools/bench_conditions.py: the conditions a benchmark ratio is recorded under (load, threads,
the not-comparable flag) and the median and spread of per-round ratios. Nothing is timed."""

import os
import sys

import pytest

from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import bench_conditions as bc  # noqa: E402


class _Sampler:
    """A `bc.Sampler` as it stands after a run, without its thread."""

    def __init__(self, start, during, end, cpu=None, own=()):
        self.load_start, self.loads, self.load_end = start, list(during), end
        self.others, self.cpu = [1, 0, 2], cpu or {"jax": [1.9, 2.0, 1.8], "torch": [1.0, 1.2]}
        self.own = own


def test_round_ratios_are_per_round_reference_over_jax():
    # rounds: reference 2, 3, 4, 10 s; JAX 1, 1, 2, 2 s -> ratios 2, 3, 2, 5
    out = bc.round_ratios([2.0, 3.0, 4.0, 10.0], [1.0, 1.0, 2.0, 2.0])
    assert out == {"median": 2.5, "min": 2.0, "q1": 2.0, "q3": 3.5, "max": 5.0, "rounds": 4}
    # one round: its ratio everywhere
    assert bc.round_ratios([3.0], [2.0]) == {"median": 1.5, "min": 1.5, "q1": 1.5, "q3": 1.5,
                                             "max": 1.5, "rounds": 1}


def test_quiet_run_is_comparable_and_records_threads_load_and_cpu(monkeypatch):
    monkeypatch.setattr(bc, "usable_cores", lambda: 2)
    monkeypatch.setenv(bc.XLA_THREADS_ENV, "2")
    out = bc.conditions(_Sampler(0.4, [1.2, 1.9], 1.1), 2,
                        {"torch_threads": 2, "torch_interop_threads": 2})
    assert out["comparable"] is True and "warning" not in out
    assert (out["cores"], out["threads"], out["xla_threads"], out["torch_threads"]) == (2, 2, 2, 2)
    assert out["load_avg_1min"] == {"start": 0.4, "end": 1.1, "max": 1.9}
    assert out["cpu_per_wall"] == {"jax": 1.9, "torch": 1.1}  # medians of each side's rounds
    assert out["other_runnable_tasks_mean"] == 1.0 and out["load_of_others_max"] == 1.9


def test_the_runs_own_threads_do_not_count_as_load(monkeypatch):
    monkeypatch.setattr(bc, "usable_cores", lambda: 2)
    # 2 benchmark threads on a quiet 2-core machine: the load average reads a little over 2
    quiet = bc.conditions(_Sampler(0.3, [1.6, 2.3], 2.2, own=[2, 2, 3, 1]), 2)
    assert quiet["comparable"] is True and quiet["load_of_others_max"] == 0.3
    # others' load on top of it, or a loaded machine before the run starts, is not quiet
    busy = bc.conditions(_Sampler(0.3, [3.5, 4.6], 4.4, own=[2, 2]), 2)
    assert busy["comparable"] is False and busy["load_of_others_max"] == 2.6
    assert bc.conditions(_Sampler(2.5, [2.0], 2.0, own=[2]), 2)["comparable"] is False


@pytest.mark.parametrize("loads", [(2.5, [1.0], 1.0), (0.5, [0.7, 3.1, 0.9], 0.8),
                                   (0.5, [], 2.01)])
def test_load_above_the_cores_at_any_point_marks_the_figures_not_comparable(
        monkeypatch, capsys, loads):
    monkeypatch.setattr(bc, "usable_cores", lambda: 2)
    out = bc.conditions(_Sampler(*loads), 2)
    assert out["comparable"] is False
    assert out["warning"].startswith("NOT COMPARABLE") and f"{max(loads[0], *loads[1], loads[2]):.2f}" \
        in out["warning"]
    bc.warn(out)
    assert "NOT COMPARABLE" in capsys.readouterr().err


def test_sampler_records_load_and_each_sides_cpu_share():
    with bc.Sampler(period_s=0.01) as sampler:
        out, wall = sampler.side("busy", lambda n: sum(i * i for i in range(n)), 200_000)
        sampler.side("busy", lambda: None)
        import time
        time.sleep(0.05)
    assert out == sum(i * i for i in range(200_000)) and wall > 0
    assert len(sampler.cpu["busy"]) == 2
    assert 0 < sampler.cpu["busy"][0] <= 1.2  # one busy Python thread: at most 1 CPU s per s
    assert sampler.loads and all(v >= 0 for v in sampler.loads)
    assert sampler.load_end >= 0


def test_threads_cannot_change_once_jax_runs(monkeypatch):
    import jax

    jax.numpy.zeros(1).block_until_ready()  # a backend is running in this process
    running = int(os.environ.get(bc.XLA_THREADS_ENV, bc.usable_cores()))
    assert bc.set_threads(None) == running
    with pytest.raises(SystemExit, match="run the benchmark as its own process"):
        bc.set_threads(running + 1)
