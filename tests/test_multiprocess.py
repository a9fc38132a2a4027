"""Several processes: JAX's distributed runtime on localhost, one CPU device per process.

A tiny SCL run by two processes (manual launch: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID, gloo collectives) must match one process with two devices; process 0 alone
writes the run's files; both killed mid-run and started again resume to the same result; the
sweep command works the same way. The launch settings themselves are checked without JAX.

Every child process runs under a deadline and is killed (its whole process group) when a
test ends, passes or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resp_jax import parallel
from train_helpers import ROOT, cli_overrides, tiny_config

RUN_TIMEOUT_S = 240      # one tiny run of two processes on a 2-core machine takes ~30 s
LOSS_RTOL = 1e-3         # two processes reduce in a different order than one (gloo)
# Variables of the environment that would make a child join some other job.
_LAUNCH_VARS = (parallel.COORDINATOR_ENV, parallel.NUM_PROCESSES_ENV, parallel.PROCESS_ID_ENV,
                parallel.DISTRIBUTED_ENV, parallel.TIMEOUT_ENV)


# ------------------------------------------------------------------------------------------
# The launch settings (no JAX job is started)


def _launch(**env):
    return parallel.launch_from_env({k: str(v) for k, v in env.items()})


def test_manual_launch_reads_the_three_variables():
    launch = _launch(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES=4,
                     JAX_PROCESS_ID=3)
    assert launch == parallel.Launch("manual", "10.0.0.1:1234", 4, 3,
                                     parallel.DEFAULT_TIMEOUT_S)
    assert _launch(JAX_COORDINATOR_ADDRESS="[::1]:80", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0,
                   RESP_JAX_DISTRIBUTED_TIMEOUT=7).timeout_s == 7
    # one process is no job; nothing set is a single-process run
    assert _launch(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=1, JAX_PROCESS_ID=0) is None
    assert _launch() is None
    # RESP_JAX_DISTRIBUTED=0 never joins
    assert _launch(RESP_JAX_DISTRIBUTED=0, JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=2,
                   JAX_PROCESS_ID=0) is None


@pytest.mark.parametrize("env, message", [
    (dict(JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0),
     r"^JAX_COORDINATOR_ADDRESS not set: a manual launch sets"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_PROCESS_ID=0), r"^JAX_NUM_PROCESSES not set"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=2), r"^JAX_PROCESS_ID not set"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1"), r"^JAX_NUM_PROCESSES and JAX_PROCESS_ID not set"),
    (dict(JAX_COORDINATOR_ADDRESS="h", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0),
     r"^JAX_COORDINATOR_ADDRESS='h' must be host:port"),
    (dict(JAX_COORDINATOR_ADDRESS="h:99999", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0),
     r"^JAX_COORDINATOR_ADDRESS='h:99999' must be host:port"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="two", JAX_PROCESS_ID=0),
     r"^JAX_NUM_PROCESSES='two' must be an integer >= 1$"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=2),
     r"^JAX_PROCESS_ID='2' must be an integer in \[0, 2\) \(JAX_NUM_PROCESSES=2\)$"),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=-1),
     r"^JAX_PROCESS_ID='-1' must be"),
    (dict(RESP_JAX_DISTRIBUTED="maybe"), r"^RESP_JAX_DISTRIBUTED='maybe' must be 1"),
    (dict(RESP_JAX_DISTRIBUTED_TIMEOUT=0, JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES=2,
          JAX_PROCESS_ID=0), r"^RESP_JAX_DISTRIBUTED_TIMEOUT='0' must be an integer >= 1"),
])
def test_a_wrong_or_partial_setting_is_one_line_naming_the_variable(env, message):
    with pytest.raises(parallel.DistributedSetupError, match=message) as e:
        _launch(**env)
    assert "\n" not in str(e.value)


def test_slurm_and_open_mpi_jobs_are_detected_and_the_flag_asks_jax():
    slurm = dict(SLURM_JOB_ID=5, SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS=2, SLURM_PROCID=1,
                 SLURM_LOCALID=0)
    assert _launch(**slurm) == parallel.Launch("slurm")
    assert _launch(**slurm, JAX_COORDINATOR_ADDRESS="n1:9999").coordinator == "n1:9999"
    assert _launch(**dict(slurm, SLURM_NTASKS=1)) is None     # one task: a plain run
    assert _launch(**{k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}) is None
    ompi = dict(OMPI_MCA_orte_hnp_uri="1.2.3.4:5", OMPI_COMM_WORLD_SIZE=4,
                OMPI_COMM_WORLD_RANK=2)
    assert _launch(**ompi) == parallel.Launch("ompi")
    # RESP_JAX_DISTRIBUTED=1 alone: JAX's own detection (Kubernetes, Cloud TPU, ...)
    assert _launch(RESP_JAX_DISTRIBUTED=1) == parallel.Launch("auto")
    assert _launch(RESP_JAX_DISTRIBUTED="true", JAX_COORDINATOR_ADDRESS="c:1") == \
        parallel.Launch("auto", "c:1")


def test_initialize_passes_the_settings_to_jax(monkeypatch):
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    monkeypatch.delenv("JAX_CPU_COLLECTIVES_IMPLEMENTATION", raising=False)
    assert parallel.initialize({}) is None and calls == []
    env = dict(JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1",
               RESP_JAX_DISTRIBUTED_TIMEOUT="9")
    assert parallel.initialize(env).source == "manual"
    assert calls[0] == ("jax_cpu_collectives_implementation", "gloo")
    assert calls[1]["coordinator_address"] == "127.0.0.1:1"
    assert (calls[1]["num_processes"], calls[1]["process_id"]) == (2, 1)
    assert "cluster_detection_method" not in calls[1]
    calls.clear()
    slurm = dict(SLURM_JOB_ID="5", SLURM_STEP_NODELIST="n1", SLURM_NTASKS="2",
                 SLURM_PROCID="0", SLURM_LOCALID="0")
    parallel.initialize(slurm)
    assert calls[1]["cluster_detection_method"] == "slurm"
    assert calls[1]["num_processes"] is None  # JAX reads the SLURM variables


def test_a_failing_join_is_one_line(monkeypatch):
    import jax

    def fail(**kw):
        raise RuntimeError("UNAVAILABLE: failed to connect\n(details...)")

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", fail)
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    env = dict(JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
    with pytest.raises(parallel.DistributedSetupError) as e:
        parallel.initialize(env)
    assert str(e.value).startswith("process 1 of 2 could not join the job through 127.0.0.1:1: "
                                   "RuntimeError: UNAVAILABLE: failed to connect. Start the")
    assert "\n" not in str(e.value)

    def no_cluster(**kw):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    with pytest.raises(parallel.DistributedSetupError, match=r"^JAX could not read the job "
                       r"from the environment \(ValueError: coordinator_address should"):
        parallel.initialize({"RESP_JAX_DISTRIBUTED": "1"})


def test_processes_making_the_default_dataset_at_once_keep_the_one_that_finished(
        tmp_path, monkeypatch):
    """Every process of a job without data.root makes the synthetic default dataset; one that
    finishes second must not delete the copy the first one already put in place (and is
    reading)."""
    import shutil

    from resp_jax.data import sources, synthetic
    monkeypatch.setattr(sources.get("icbhi"), "synthetic_default", 4)
    target = tmp_path / f"icbhi-{synthetic.CACHE_VERSION}"
    write = synthetic.write

    def write_while_another_process_finishes(dataset, out, **kw):
        write(dataset, out, **kw)
        shutil.copytree(out, target)  # the other process's complete copy, renamed into place
        (target / synthetic._COMPLETE).write_text(synthetic.CACHE_VERSION + "\n")
        (target / "in-use").touch()
        return out

    monkeypatch.setattr(synthetic, "write", write_while_another_process_finishes)
    assert synthetic.default_dataset("icbhi", cache_dir=tmp_path) == target
    assert (target / "in-use").exists() and (target / synthetic._COMPLETE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary copy left


# ------------------------------------------------------------------------------------------
# Real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("SLURM_", "OMPI_"))}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


class Job:
    """N processes of one command (a process group each), their output in files."""

    def __init__(self, argv, logdir: Path, processes: int, env: dict | None = None,
                 timeout_s: int = 60):
        self.procs, self.logs = [], []
        port = _free_port()
        logdir.mkdir(parents=True, exist_ok=True)
        for i in range(processes):
            child = dict(_base_env(), **(env or {}))
            if processes > 1:
                child.update({parallel.COORDINATOR_ENV: f"127.0.0.1:{port}",
                              parallel.NUM_PROCESSES_ENV: str(processes),
                              parallel.PROCESS_ID_ENV: str(i),
                              parallel.TIMEOUT_ENV: str(timeout_s)})
            log = logdir / f"process_{i}-{time.monotonic_ns()}.log"
            self.logs.append(log)
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=child, stdout=out,
                                                   stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def output(self, i: int = 0) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout_s
        try:
            return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"processes still running after {timeout_s} s; process 0's output:\n"
                        + self.output(0)[-3000:])

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def _config(data, epochs=2):
    config = tiny_config("scl", batch_size=8, epochs=epochs, duration=1.0)
    config.data.root = str(data["root"])
    config.data.tfds_dir = str(data["tfds"])
    return config


def _command(module, config, workdir, *extra):
    return [sys.executable, "-m", f"resp_jax.{module}", "--config=configs/scl.py",
            f"--workdir={workdir}", *cli_overrides(config, "scl"), *extra]


def _cache_env(cache_dir: Path) -> dict:
    """A persistent compilation cache shared by the children (every program cached): the
    two-process runs compile the same programs; only the first pays for it."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _run(module, config, workdir, processes, *extra, devices=1, env=None):
    env = {"JAX_NUM_CPU_DEVICES": str(devices), **(env or {})}
    with Job(_command(module, config, workdir, *extra), workdir.parent / "logs", processes,
             env) as job:
        codes = job.wait()
        assert codes == [0] * processes, f"exit {codes}:\n{job.output(0)[-3000:]}\n" \
                                         f"{job.output(processes - 1)[-3000:]}"
        return [job.output(i) for i in range(processes)]


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _files(workdir: Path) -> set[str]:
    return {p.relative_to(workdir).as_posix() for p in workdir.rglob("*")
            if p.is_file() and "ckpt" not in p.parts and "tensorboard" not in p.parts}


def _assert_same_run(got: Path, want: Path) -> None:
    m_got, m_want = _metrics(got), _metrics(want)
    key = lambda m: (m["epoch"], m["stage"], m.get("split"), m.get("step"))  # noqa: E731
    assert [key(m) for m in m_got] == [key(m) for m in m_want]  # no line twice
    pretrain = lambda ms: [m for m in ms if m["stage"] == "pretrain" and "split" in m]  # noqa
    assert pretrain(m_got)[-1]["loss"] == pytest.approx(pretrain(m_want)[-1]["loss"],
                                                       rel=LOSS_RTOL)
    r_got, r_want = (json.loads((d / "results.json").read_text()) for d in (got, want))
    assert r_got["epoch"] == r_want["epoch"]
    for key in ("sp", "se", "score", "hs"):
        assert r_got["test"][key] == r_want["test"][key], key
    # Every process holds the gathered test outputs; process 0 wrote them, in the same order.
    from resp_jax import evaluation
    p_got, p_want = (evaluation.read(d / evaluation.PREDICTIONS_FILE, "icbhi")
                     for d in (got, want))
    assert p_got.keys() == p_want.keys() and (p_got.predicted == p_want.predicted).all()
    np.testing.assert_allclose(p_got.probabilities, p_want.probabilities, atol=1e-4)


@pytest.fixture(scope="module")
def prepared(tiny_icbhi):
    """The tiny dataset with its TFDS cache built once, before any child reads it."""
    from resp_jax.data import prepare
    prepare.load("icbhi", tiny_icbhi["root"], data_dir=str(tiny_icbhi["tfds"]))
    return tiny_icbhi


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    return _cache_env(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """The tiny SCL run by one process with two CPU devices: this one (conftest)."""
    import jax

    from resp_jax import train
    assert len(jax.devices()) == 2
    workdir = tmp_path_factory.mktemp("mp_reference") / "run"
    train.train_and_evaluate(_config(prepared), workdir)
    return workdir


@pytest.mark.slow
def test_a_process_that_waits_for_a_missing_peer_times_out_with_one_line(tmp_path):
    argv = [sys.executable, "-c", "from resp_jax import main; import sys; "
            "sys.argv[:] = ['main', '--config=configs/scl.py']; main.app.run(main.main)"]
    with Job(argv, tmp_path, processes=1, env={
            parallel.COORDINATOR_ENV: f"127.0.0.1:{_free_port()}",
            parallel.NUM_PROCESSES_ENV: "2", parallel.PROCESS_ID_ENV: "0",
            parallel.TIMEOUT_ENV: "2"}) as job:
        started = time.monotonic()
        assert job.wait(60) == [parallel.JOIN_TIMEOUT_EXIT]
        assert time.monotonic() - started < 45
        errors = [line for line in job.output().splitlines() if line.startswith("error:")]
        assert len(errors) == 1, job.output()[-3000:]
        assert re.fullmatch(r"error: process 0 of 2 could not join the job through "
                            r"127\.0\.0\.1:\d+: not every process arrived within 2 s\. Start "
                            r"the same command on every process, .* \(RESP_JAX_DISTRIBUTED_"
                            r"TIMEOUT sets the wait\)", errors[0])


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(prepared, reference, cache_env,
                                                            tmp_path):
    workdir = tmp_path / "run"
    outputs = _run("main", _config(prepared), workdir, 2, env=cache_env)
    assert "Mesh: 2 device(s) over 2 process(es): cpu" in outputs[0]
    _assert_same_run(workdir, reference)
    # process 0 alone writes: the same files as the one-process run, one TensorBoard file,
    # the result line printed once
    assert _files(workdir) == _files(reference)
    assert len(list((workdir / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (workdir / "ckpt").iterdir()) == ["best", "last"]
    assert "test (test): Sp" in outputs[0] and "test (test): Sp" not in outputs[1]


@pytest.mark.slow
def test_a_sweep_of_two_processes_killed_after_an_evaluation_resumes_to_the_same_result(
        prepared, reference, cache_env, tmp_path):
    """`resp_jax.sweep` (one seed, the reference's) by two processes, both killed once the
    first epoch's line is in metrics.jsonl and its checkpoint is on disk, then started again:
    the run resumes from that checkpoint and ends as the uninterrupted one-process run;
    process 0 alone writes the summary and prints the table."""
    workdir = tmp_path / "sweep"
    config = _config(prepared)
    run = workdir / "seed_0"
    with Job(_command("sweep", config, workdir, "--seeds=1"), tmp_path / "logs", 2,
             cache_env) as job:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ((run / "metrics.jsonl").exists() and _metrics(run)
                   and any(p.name.isdigit() for p in (run / "ckpt" / "last").glob("*"))):
            assert time.monotonic() < deadline and all(p.poll() is None for p in job.procs), \
                job.output(0)[-3000:]
            time.sleep(0.05)
        job.kill()
    assert not (run / "results.json").exists(), "killed too late: the run had finished"
    outputs = _run("sweep", config, workdir, 2, "--seeds=1", env=cache_env)
    assert "Resuming from" in outputs[0]
    _assert_same_run(run, reference)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["runs"] == 1 and summary["seeds"] == [config.train.seed]
    assert "| SCL, scratch |" in outputs[0] and "| SCL, scratch |" not in outputs[1]
