"""The GPU figures in one go (started by tools/gpu_check.sh, which installs the environment).

    python tools/gpu_check.py [--cpu] [--workdir=runs/gpu_check] [--budget=570]
        [--icbhi_annotations=ICBHI_ROOT]

In order, each step a child process with a deadline, its output in WORKDIR/logs/<step>.log:

1. environment: JAX's devices, nvidia-smi's GPU names, driver and memory;
2. gpu_tests: `pytest -m gpu` (tests/test_gpu.py: the step on the GPU against the CPU,
   bfloat16 against float32, one against two GPUs), with the figures those checks computed;
3. train_step: `tools/benchmark.py train-step` of CNN6 SupCon, float32 and bfloat16, batch
   128, 8-s clips (251 frames), on one GPU; AST (batch 8, 798 frames) when it is registered;
4. icbhi_epoch: the full-size synthetic stand-in of ICBHI (920 recordings, or one wav per
   annotation file of --icbhi_annotations) written, then `tools/benchmark.py loop`: one
   compiling epoch and one timed full-size epoch of the real loop, batch 128;
5. two_gpus: one global batch over two GPUs against one (from step 2), when there are two;
6. train_step of the other methods (ce, hybrid, mscl, simclr; both dtypes), for
   docs/benchmarks.md's table, while the budget lasts.

A step that would not fit in what is left of --budget seconds (counted from the start of
tools/gpu_check.sh, installation included) is recorded as skipped for time. Everything goes
into WORKDIR/gpu_check.json, also printed as the last line. Exit status 0 when no step failed.

--cpu runs every step on the CPU with tiny sizes (the plumbing, in a few minutes, no GPU).
A persistent compilation cache in WORKDIR/jax_cache makes a second run faster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("scl", "ce", "hybrid", "mscl", "simclr")
DTYPES = ("float32", "bfloat16")
RESERVE_S = 5          # kept back for writing the JSON
MIN_STEP_S = 20        # a step with less time than this left is skipped


class Check:
    def __init__(self, args):
        self.args = args
        self.cpu = args.cpu
        self.workdir = Path(args.workdir).absolute()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.started = args.started or time.time()
        self.deadline = self.started + args.budget
        self.result = {"mode": "cpu" if self.cpu else "cuda", "budget_s": args.budget,
                       "install_s": args.install_s, "steps_s": {}, "skipped_for_time": [],
                       "failed": []}
        self.env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", str(self.workdir / "jax_cache"))
        if self.cpu:
            self.env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")

    def left(self) -> float:
        return self.deadline - RESERVE_S - time.time()

    def run(self, name: str, argv: list, cap_s: float, env: dict | None = None):
        """Runs ``argv``; returns (completed process or None, seconds). None: skipped for
        time, or killed at its deadline (recorded in the result either way)."""
        timeout = min(cap_s, self.left())
        if timeout < MIN_STEP_S:
            self.result["skipped_for_time"].append(name)
            return None, 0.0
        log = self.workdir / "logs" / f"{name}.log"
        t = time.time()
        try:
            done = subprocess.run(argv, cwd=REPO, env=env or self.env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
            log.write_text(out)
            self.result["failed"].append(f"{name}: killed after {timeout:.0f} s")
            return None, time.time() - t
        seconds = time.time() - t
        log.write_text(f"$ {' '.join(argv)}\n{done.stdout}\n--- stderr\n{done.stderr}")
        self.result["steps_s"][name] = round(seconds, 1)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            self.result["failed"].append(f"{name}: exit {done.returncode}: {tail}")
        return done, seconds

    @staticmethod
    def last_json(done) -> dict | None:
        for line in reversed(done.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return None

    # --------------------------------------------------------------------------------------

    def environment(self) -> None:
        code = ("import json, jax, jaxlib; d = jax.devices(); print(json.dumps({"
                "'jax': jax.__version__, 'jaxlib': jaxlib.__version__, "
                "'platform': d[0].platform, 'device_kind': d[0].device_kind, "
                "'devices': len(d)}))")
        done, _ = self.run("environment", [sys.executable, "-c", code], 120)
        env = (self.last_json(done) if done is not None and not done.returncode else None) or {}
        if shutil.which("nvidia-smi"):
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=60)
            env["nvidia_smi"] = [line.strip() for line in q.stdout.splitlines() if line.strip()]
        self.result["environment"] = env
        self.gpus = env.get("devices", 0) if env.get("platform") == "gpu" else 0
        if not self.cpu and env.get("platform") != "gpu":
            self.result["failed"].append(f"environment: JAX sees no GPU ({env or 'no JAX'}); "
                                         "is the cuda extra installed?")

    def gpu_tests(self) -> None:
        xml, report = self.workdir / "gpu_tests.xml", self.workdir / "gpu_tests_report.json"
        report.unlink(missing_ok=True)
        env = dict(self.env, RESP_JAX_GPU_REPORT=str(report))
        env.pop("JAX_PLATFORMS", None)  # the tests choose; the test session is CPU-only
        if self.cpu:
            env["RESP_JAX_GPU_TEST_PLATFORM"] = "cpu"
        done, _ = self.run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q",
                                         "-p", "no:cacheprovider", f"--junitxml={xml}"],
                           480, env)
        out = {}
        if xml.exists() and done is not None:
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
        if report.exists():
            out["figures"] = json.loads(report.read_text())
        self.result["gpu_tests"] = out

    def train_step(self, method: str, dtype: str) -> None:
        size = (["--batch=8", "--frames=32", "--channels=4,8,8,16", "--steps=1", "--rounds=1"]
                if self.cpu else ["--batch=128", "--frames=251"])
        env = dict(self.env)
        if self.gpus > 1:  # figures of one GPU
            env["CUDA_VISIBLE_DEVICES"] = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0") \
                .split(",")[0]
        done, seconds = self.run(f"train_step_{method}_{dtype}",
                                 [sys.executable, "tools/benchmark.py", "train-step",
                                  f"--method={method}", f"--dtype={dtype}", *size], 180, env)
        figures = self.last_json(done) if done is not None and not done.returncode else None
        if figures is not None:
            figures["wall_s"] = round(seconds, 1)
            self.result.setdefault("train_step", []).append(figures)

    def ast(self) -> None:
        sys.path.insert(0, str(REPO))
        from resp_jax.models import BACKBONES
        self.result["ast"] = {"present": "ast" in BACKBONES, "models": sorted(BACKBONES)}
        if "ast" not in BACKBONES:
            return
        size = (["--ast-size=tiny", "--batch=2", "--frames=64", "--steps=1", "--rounds=1"]
                if self.cpu else ["--ast-size=base", "--batch=8", "--frames=798"])
        for dtype in ("float32", "bfloat16"):
            done, seconds = self.run(f"train_step_ast_{dtype}",
                                     [sys.executable, "tools/benchmark.py", "train-step",
                                      "--model=ast", "--method=ce", f"--dtype={dtype}", *size],
                                     240)
            figures = self.last_json(done) if done is not None and not done.returncode else None
            if figures is not None:
                figures["wall_s"] = round(seconds, 1)
                self.result["ast"].setdefault("train_step", []).append(figures)

    def icbhi_epoch(self) -> None:
        data, tfds = self.workdir / "icbhi_standin", self.workdir / "tfds"
        marker = data / ".gpu_check_complete"
        out = {}
        if not marker.exists():
            shutil.rmtree(data, ignore_errors=True)
            if self.args.icbhi_annotations:
                source = [f"--from_annotations={self.args.icbhi_annotations}"]
            else:
                source = [f"--recordings={12 if self.cpu else 920}"]
            done, seconds = self.run(
                "icbhi_write", [sys.executable, "-m", "resp_jax.data.synthetic",
                                "--dataset=icbhi", f"--out={data}", *source,
                                f"--workers={os.cpu_count() or 1}"], 240)
            if done is None or done.returncode:
                self.result["icbhi_epoch"] = {"written": False}
                return
            marker.touch()
            out["write_s"] = round(seconds, 1)
            out["written"] = done.stdout.strip().splitlines()[-1]
        size = (["--batch=8", "--channels=4,8,8,16", "--duration=1"] if self.cpu
                else ["--batch=128"])
        done, seconds = self.run("icbhi_epoch", [
            sys.executable, "tools/benchmark.py", "loop", "--method=scl", f"--data_dir={data}",
            f"--tfds_dir={tfds}", "--epochs=1", *size], 420)
        if done is not None and not done.returncode:
            out.update(self.last_json(done) or {})
            # preparation (the first time), log-mel, two epochs, one linear-evaluation epoch
            out["wall_s"] = round(seconds, 1)
        self.result["icbhi_epoch"] = out

    def two_gpus(self) -> None:
        figures = self.result.get("gpu_tests", {}).get("figures", {})
        if figures.get("devices", 0) < 2:
            self.result["two_gpus"] = {"skipped": "fewer than two devices"}
            return
        self.result["two_gpus"] = {k: figures[k] for k in (
            "devices", "two_devices_max_rel_loss_diff", "two_devices_max_abs_param_diff")}

    def main(self) -> int:
        self.environment()
        self.gpu_tests()
        for dtype in DTYPES:
            self.train_step("scl", dtype)
        self.ast()
        self.icbhi_epoch()
        self.two_gpus()
        for method in METHODS[1:]:
            for dtype in DTYPES:
                self.train_step(method, dtype)
        self.result["total_s"] = round(time.time() - self.started, 1)
        path = self.workdir / "gpu_check.json"
        path.write_text(json.dumps(self.result, indent=2) + "\n")
        print(f"figures in {path}", file=sys.stderr)
        print(json.dumps(self.result))
        return 1 if self.result["failed"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="every step on the CPU with tiny sizes (no GPU needed)")
    parser.add_argument("--workdir", default="runs/gpu_check",
                        help="logs, the stand-in dataset, the compilation cache, the JSON")
    parser.add_argument("--budget", type=float, default=570,
                        help="seconds for everything, counted from --started")
    parser.add_argument("--icbhi_annotations", default="",
                        help="an ICBHI root: the stand-in gets one wav per annotation file")
    parser.add_argument("--started", type=float, default=0.0,
                        help="epoch seconds the whole check started (tools/gpu_check.sh)")
    parser.add_argument("--install_s", type=float, default=None,
                        help="seconds the installation took (tools/gpu_check.sh)")
    return Check(parser.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
