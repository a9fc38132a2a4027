"""The conditions a speed ratio of tools/benchmark.py is measured under, and its spread.

A ratio of two implementations timed in one process means something only when both had the
same cores: the same number of threads, and a machine not loaded beyond its cores (under
load PyTorch's OpenMP threads, which wait for each other at every parallel region, lose far
more than XLA's, and a ratio measured there flatters JAX several times over).

- `set_threads` gives XLA:CPU and PyTorch the same thread count. XLA's CPU client sizes its
  intra-op pools (Eigen and its own workers) from ``PJRT_NPROC`` when its backend starts,
  so it must run before the first JAX computation; PyTorch gets ``set_num_threads`` and
  ``set_num_interop_threads``. `Sampler` records, per side, the process's CPU seconds per
  wall second while that side runs: at most the thread count (1.0 at ``--threads=1``),
  which is how the setting is seen to hold.
- `Sampler` also reads the 1-minute load average (and the numbers of runnable tasks inside
  and outside this process) once a second in a background thread, and before and after the
  run. `conditions` marks the figures *not comparable* when the load average exceeded the
  number of cores at any point of the run, this process's own share taken out (its mean
  runnable threads: a quiet 2-core machine running the benchmark's 2 threads reads about 2).
- `round_ratios` gives the median and the spread (min, quartiles, max) of the per-round
  ratios of alternating rounds: each round of the reference and the round of JAX that follows
  it see about the same machine.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

XLA_THREADS_ENV = "PJRT_NPROC"  # read by XLA's CPU client (TfrtCpuClient) at backend start


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Makes XLA:CPU use ``threads`` threads (None: every usable core) and returns the count.
    Call before JAX starts a backend (resp_jax's import does not start one)."""
    from jax._src import xla_bridge

    wanted = int(threads or usable_cores())
    if wanted < 1:
        raise SystemExit(f"--threads must be >= 1, got {wanted}")
    if xla_bridge.backends_are_initialized():  # called inside a process already running JAX
        running = int(os.environ.get(XLA_THREADS_ENV, usable_cores()))
        if threads is not None and wanted != running:
            raise SystemExit(f"--threads={wanted}: JAX already runs here with {running} "
                             "threads; run the benchmark as its own process")
        return running
    os.environ[XLA_THREADS_ENV] = str(wanted)
    return wanted


def set_torch_threads(threads: int) -> dict:
    """PyTorch's intra- and inter-op thread counts set to ``threads``; what it reports."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work already started in this process
        pass
    return {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}


def _own_runnable() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                n += f.read().rsplit(")", 1)[1].split()[0] in ("R", "D")
        except (FileNotFoundError, IndexError):
            pass
    return n


def _system_runnable() -> int | None:
    """Runnable tasks of the whole system now (/proc/loadavg's 4th field, this one included)."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


class Sampler:
    """Load average and others' runnable tasks once a second while running (a daemon thread),
    and each side's CPU seconds per wall second (`side`)."""

    def __init__(self, period_s: float = 1.0):
        self.period_s = period_s
        self.load_start = os.getloadavg()[0]
        self.loads: list[float] = []
        self.others: list[int] = []
        self.own: list[int] = []
        self.cpu: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.loads.append(os.getloadavg()[0])
            system = _system_runnable()
            if system is not None:
                own = _own_runnable()
                self.own.append(own)
                self.others.append(max(system - own, 0))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.load_end = os.getloadavg()[0]

    def side(self, name: str, fn, *args):
        """``fn(*args)``, its wall time, and the process CPU time it used, recorded for
        ``name`` as CPU seconds per wall second."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.cpu.setdefault(name, []).append(cpu / wall if wall > 0 else 0.0)
        return out, wall


def conditions(sampler: Sampler, threads: int, torch_info: dict | None = None) -> dict:
    """The measurement conditions of a run for its JSON (see the module doc)."""
    cores = usable_cores()
    loads = [sampler.load_start, *sampler.loads, sampler.load_end]
    out = {"cores": cores, "cpu_count": os.cpu_count(), "threads": threads,
           "xla_threads": int(os.environ.get(XLA_THREADS_ENV, cores)),
           **(torch_info or {}),
           "load_avg_1min": {"start": round(sampler.load_start, 2),
                             "end": round(sampler.load_end, 2), "max": round(max(loads), 2)},
           "cpu_per_wall": {k: round(statistics.median(v), 2) for k, v in sampler.cpu.items()}}
    if sampler.others:
        out["other_runnable_tasks_mean"] = round(statistics.fmean(sampler.others), 2)
    # the load of everything else: the run's own mean runnable threads taken out (the start
    # reading comes before the run)
    own = statistics.fmean(sampler.own) if getattr(sampler, "own", None) else 0.0
    others = max(sampler.load_start, *(v - own for v in loads[1:]))
    out["load_of_others_max"] = round(max(others, 0.0), 2)
    out["comparable"] = others <= cores
    if not out["comparable"]:
        out["warning"] = (f"NOT COMPARABLE: the 1-minute load average reached {max(loads):.2f} "
                          f"on {cores} cores during this run ({others:.2f} without this "
                          "run's own threads); ratios measured on a loaded machine mislead "
                          "(PyTorch's threads lose more than XLA's). Measure again when the "
                          "load is below the core count.")
    return out


def round_ratios(reference_s: list[float], jax_s: list[float]) -> dict:
    """Per-round reference time / JAX time (> 1: JAX faster): median, min, quartiles, max."""
    ratios = sorted(r / j for r, j in zip(reference_s, jax_s))
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 \
        else [ratios[0]] * 3
    return {"median": round(statistics.median(ratios), 3), "min": round(ratios[0], 3),
            "q1": round(q[0], 3), "q3": round(q[2], 3), "max": round(ratios[-1], 3),
            "rounds": len(ratios)}


def warn(out: dict) -> None:
    """The not-comparable warning on stderr too, where a reader of the terminal sees it."""
    import sys

    if out.get("warning"):
        print(f"WARNING: {out['warning']}", file=sys.stderr)
