"""GPU acceptance in one command (`make gpu-check` / scripts/gpu_check.sh / python -m cnn_gpu.acceptance).

On a machine with an NVIDIA GPU and CuPy (CUDA 12 or 13 build; no network needed) it runs, each in
its own process so one crash does not hide the rest:

  1. the CUDA test sweep            pytest -m gpu tests benchmarks
  2. the op cross-check             cnn-gpu check --device cuda --thorough   (float64, float32,
                                    float32 in the tf32 math mode and float16: the tensor-core kernels)
  3. the kernel resource report     cnn-gpu kernels
  4. the mma.sync issue rate        benchmarks/mma_rate.py: the tensor pipe's clocks per HMMA and
                                    TFLOP/s, measured next to the rate the model assumes
  5. the benchmark                  cnn-gpu bench --shapes resnet --math fp32,tf32 --dtype float32,float16
                                    (every op but conv2d_fwd_bwd: train_step_replayed too)
                                    (PyTorch in the same modes when present,
                                    device model:gpu adds the roofline model's estimate of this GPU
                                    beside each measured cuda row, to calibrate the model)
  6. short training runs            cnn-gpu train --device cuda --epochs 2, and --precision fp16
                                    without and with --replay (cnn_gpu.replay)
  7. the tensor-core plans          benchmarks/tc_plans.py: each pass's planned tile and dy path
                                    beside its alternatives, measured next to the model

and writes one markdown report (GPU, driver and CUDA versions, every table, a pass/fail summary)
whose path it prints. Exit status: 0 all steps passed, 1 a step failed, 2 no usable GPU.

--only TITLES runs the named steps alone (comma-separated titles, as the report names them:
"check float16,bench"; an unknown one lists them all), to rerun what failed or what a lease cut;
with --budget each as the lease runs it (its checks --quick).

--budget SECONDS is for a GPU lent for minutes (a device lease): the steps that tell most come
first (the mma.sync rate the model assumes, the tensor-core kernels checked with --quick in tf32 and
float16, the tensor-core plans timed, then the benchmark and the CUDA test sweep), each stopped
where the budget ends (CUT: not a failure) and the rest not started (SKIPPED). The report is
rewritten after every step, so a call that ends early still returns what was done.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import backend

PYTEST_NO_TESTS = 5   # pytest's exit status when nothing was collected
# --budget: the steps in the order they run, and which run as with --quick (the others as in full)
LEASE_STEPS = (("mma.sync issue rate", False), ("check tf32", True), ("check float16", True),
               ("tensor-core plans", False), ("bench", False), ("CUDA test sweep", False))
MIN_STEP_S = 30   # --budget: a step starts only with this much of the budget left
NO_GPU_HINT = ("gpu-check proves the CUDA kernels on an NVIDIA GPU. On a machine without one, "
               "`make test` and `cnn-gpu check --device emu` check the same kernels on the CPU emulator.")


def gpu_problem() -> str:
    """Why this process cannot use a GPU through CuPy ("" when it can)."""
    try:
        import cupy
    except Exception as err:  # not installed, or a build for another CUDA version
        return (f"CuPy does not import in {sys.executable} ({type(err).__name__}: {err}); install the build "
                f"for the machine's CUDA: pip install 'cnn_gpu[cuda12]' or 'cnn_gpu[cuda13]'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver, or the driver is older than CuPy's CUDA
        return f"CuPy {cupy.__version__} finds no usable NVIDIA driver/GPU ({type(err).__name__}: {err})"
    if count < 1:
        return f"CuPy {cupy.__version__} sees no GPU"
    return backend.why_unavailable("cuda")   # CuPy sees a GPU, but NVRTC or cuBLAS may still be missing


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def environment() -> list[tuple[str, str]]:
    """(name, value) facts about the GPU, driver, CUDA, CuPy, PyTorch and the checkout."""
    import cupy
    import numpy as np

    from .bench import gpu_info
    facts = []
    info = gpu_info()
    if not info:   # gpu_problem() let it through, yet the properties cannot be read
        facts.append(("GPU", f"properties unreadable: {backend.why_unavailable('cuda') or 'unknown reason'}"))
    else:
        facts.append(("GPU", f"{info['name']} (compute capability {info['compute_capability']}, {info['sms']} SMs, "
                             f"{info['memory_gib']} GiB, {info['clock_mhz']:.0f} MHz)"))
    if "peak_gflops" in info:
        peak = info["peak_gflops"]
        facts.append(("fp32 / fp64 peak", f"{peak['float32'] / 1e3:.1f} / {peak['float64'] / 1e3:.1f} TFLOP/s "
                                          f"(SMs x clock x lanes)"))
    runtime = cupy.cuda.runtime
    facts.append(("driver (CUDA API)", _cuda_version(runtime.driverGetVersion())))
    facts.append(("CUDA runtime (CuPy)", _cuda_version(runtime.runtimeGetVersion())))
    try:
        major, minor = cupy.cuda.nvrtc.getVersion()
        facts.append(("NVRTC", f"{major}.{minor}"))
    except Exception as err:  # NVRTC missing: the kernels step will say more
        facts.append(("NVRTC", f"unavailable ({err})"))
    facts.append(("CuPy", cupy.__version__))
    smi = shutil.which("nvidia-smi")
    if smi:
        result = subprocess.run([smi, "--query-gpu=name,driver_version,power.limit,clocks.max.sm",
                                 "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            facts.append(("nvidia-smi", result.stdout.strip().replace("\n", "; ")))
    try:
        import torch
        cuda = torch.version.cuda or "none"
        cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        facts.append(("PyTorch", f"{torch.__version__} (CUDA {cuda}, cuDNN {cudnn}, "
                                 f"GPU {'visible' if torch.cuda.is_available() else 'not visible'})"))
    except ImportError:
        facts.append(("PyTorch", "not installed (no cuDNN comparison)"))
    facts.append(("Python / NumPy", f"{platform.python_version()} / {np.__version__}"))
    facts.append(("host", f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"))
    git = shutil.which("git")
    if git and Path(".git").exists():
        head = subprocess.run([git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([git, "status", "--porcelain"], capture_output=True, text=True)
        if head.returncode == 0:
            facts.append(("commit", head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip()
                                                           else "")))
    return facts


@dataclass
class Step:
    title: str
    command: list
    timeout_s: int
    returncode: int | None = None
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    skipped: str = ""
    cut: bool = False   # stopped where --budget ended

    @property
    def status(self) -> str:
        if self.skipped:
            return "SKIPPED"
        if self.cut:
            return "CUT"
        return "PASS" if self.returncode == 0 else "FAIL"


def _pump(stream, sink, chunks):
    for line in iter(stream.readline, ""):
        chunks.append(line)
        sink.write(line)
        sink.flush()
    stream.close()


def run_step(step: Step, seconds_left: float | None = None) -> Step:
    """Run the step's command, echoing its output live and keeping a copy for the report; with
    `seconds_left` (--budget), stop it there if its own timeout comes later (the step is CUT)."""
    limit = step.timeout_s if seconds_left is None else min(step.timeout_s, seconds_left)
    print(f"\n=== {step.title}: {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    out, err = [], []
    # its own process group: a stopped step takes its child processes with it (they hold its pipes)
    process = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(process.stdout, sys.stdout, out), daemon=True),
             threading.Thread(target=_pump, args=(process.stderr, sys.stderr, err), daemon=True)]
    for pump in pumps:
        pump.start()
    try:
        step.returncode = process.wait(timeout=limit)
    except KeyboardInterrupt:   # the group does not see the terminal's Ctrl-C: stop it here
        os.killpg(process.pid, signal.SIGKILL)
        raise
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        step.returncode = process.wait()
        step.cut = limit < step.timeout_s
        err.append(f"\ngpu-check: {'cut at the end of the --budget' if step.cut else 'killed'} after {limit:.0f} s\n")
    try:   # what the step left running would hold its pipes open
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pump in pumps:
        pump.join()
    step.seconds = time.perf_counter() - start
    step.stdout, step.stderr = "".join(out), "".join(err)
    print(f"=== {step.title}: {step.status} ({step.seconds:.0f} s)", flush=True)
    return step


def _clean(text: str, last_lines: int | None = None) -> str:
    """Output without progress-bar redraws (keep what follows the last carriage return of a line)."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if last_lines is not None:
        lines = lines[-last_lines:]
    return "\n".join(lines)


def steps(python: str, out_dir: Path, quick: bool) -> list[Step]:
    from .bench import OPS, default_devices
    from .bench.ops import ON_REQUEST
    cli = [python, "-m", "cnn_gpu"]
    mode = "--quick" if quick else "--thorough"
    devices = ",".join(default_devices() + ["model:gpu"])
    bench = cli + ["bench", "--shapes", "tiny" if quick else "resnet", "--math", "fp32,tf32",
                   "--dtype", "float32,float16", "--device", devices,
                   # the default ops and train_step_replayed (not the other families': the lease's budget)
                   "--ops", ",".join(op for op in OPS if op not in ON_REQUEST or op == "train_step_replayed"),
                   "--markdown",
                   "--no-progress", "--json", str(out_dir / "bench.json"), "--csv", str(out_dir / "bench.csv")]
    if quick:   # a rehearsal times every row, but not for the ~0.3 s a row a measurement takes
        bench += ["--repeat", "3"]
    try:
        import matplotlib  # noqa: F401
        bench += ["--plot", str(out_dir / "bench.png")]
    except ImportError:
        pass
    tests = [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests", "benchmarks"]
    result = [
        Step("CUDA test sweep", tests, 3600),
        Step("check float64", cli + ["check", "--device", "cuda", mode, "--markdown",
                                     "--json", str(out_dir / "check-float64.json")], 1800),
        Step("check float32", cli + ["check", "--device", "cuda", mode, "--dtype", "float32", "--markdown",
                                     "--json", str(out_dir / "check-float32.json")], 1800),
        Step("check tf32", cli + ["check", "--device", "cuda", mode, "--math", "tf32", "--markdown",
                                  "--json", str(out_dir / "check-tf32.json")], 1800),
        Step("check float16", cli + ["check", "--device", "cuda", mode, "--dtype", "float16", "--markdown",
                                     "--json", str(out_dir / "check-float16.json")], 1800),
        Step("kernels", cli + ["kernels"], 900),
        Step("mma.sync issue rate", [python, "benchmarks/mma_rate.py", "--markdown"], 300),
        Step("bench", bench, 3600),
        Step("train", cli + ["train", "--device", "cuda", "--epochs", "2"]
             + (["--max-batches", "5"] if quick else []), 900),
        Step("train fp16", cli + ["train", "--device", "cuda", "--epochs", "2", "--precision", "fp16"]
             + (["--max-batches", "5"] if quick else []), 900),
        Step("train fp16 --replay", cli + ["train", "--device", "cuda", "--epochs", "2", "--precision", "fp16",
                                           "--replay"] + (["--max-batches", "5"] if quick else []), 900),
        Step("tensor-core plans", [python, "benchmarks/tc_plans.py", "--markdown"]
             + (["--batch", "32", "--repeat", "5"] if quick else []), 1800),
    ]
    if not Path("tests").is_dir():
        result[0].skipped = "no tests/ folder here (run gpu-check from a checkout to include the test sweep)"
    if not Path("benchmarks").is_dir():
        for step in result:
            if step.command[1].startswith("benchmarks/"):
                step.skipped = "no benchmarks/ folder here (run gpu-check from a checkout to include this step)"
    return result


def lease_steps(python: str, out_dir: Path) -> list[Step]:
    """The steps of --budget (LEASE_STEPS), in the order that tells most in the fewest minutes."""
    quick = {step.title: step for step in steps(python, out_dir, quick=True)}
    full = {step.title: step for step in steps(python, out_dir, quick=False)}
    return [(quick if as_quick else full)[title] for title, as_quick in LEASE_STEPS]


def runnable_steps(python: str, out_dir: Path, quick: bool, lease: bool) -> list[Step]:
    """Every step, each as this run makes it (--only picks among them): under a lease (--budget)
    its steps as lease_steps has them, in that order, then the others in full; else steps()."""
    if not lease:
        return steps(python, out_dir, quick)
    leased = lease_steps(python, out_dir)
    titles = {step.title for step in leased}
    return leased + [step for step in steps(python, out_dir, False) if step.title not in titles]


def write_report(path: Path, facts, done: list[Step], started: str) -> None:
    from .bench import write_text
    passed = all(s.status != "FAIL" for s in done)
    lines = ["# cnn_gpu GPU acceptance report", "",
             f"{started} UTC. Overall: **{'PASS' if passed else 'FAIL'}**", "",
             "| step | result | exit | seconds |", "|---|---|---:|---:|"]
    lines += [f"| {s.title} | {s.status} | {'' if s.returncode is None else s.returncode} | {s.seconds:.0f} |"
              for s in done]
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts]
    for step in done:
        lines += ["", f"## {step.title}: {step.status}", "", f"`{' '.join(step.command)}`", ""]
        if step.skipped:
            lines += [step.skipped]
            continue
        output = _clean(step.stdout)
        # check and bench print markdown tables (--markdown); other output goes in a code block
        lines += [output] if "--markdown" in step.command else ["```", output or "(no output)", "```"]
        if step.returncode == PYTEST_NO_TESTS and step.command[1:3] == ["-m", "pytest"]:
            lines += ["", "pytest collected no test marked `gpu`: the CUDA kernels were not exercised by the suite."]
        if step.status in ("FAIL", "CUT"):
            lines += ["", "stderr (last 60 lines):", "", "```", _clean(step.stderr, 60) or "(empty)", "```"]
    plot = path.parent / "bench.png"
    if plot.exists():
        lines += ["", f"![time per op and device]({plot.name})"]
    write_text(path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help="folder for the report and the bench/check files "
                                                     "(default: gpu-check-<UTC time>/)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="a fast rehearsal: check --quick, tiny bench shapes, a few training batches")
    mode.add_argument("--budget", type=float, metavar="SECONDS",
                      help="a GPU lent for minutes: the most telling steps first, stopped where SECONDS end")
    parser.add_argument("--only", metavar="TITLES",
                        help="run only these steps (comma-separated titles, as the report names them: "
                             "rerun what failed, or what a lease cut)")
    args = parser.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
    only = None if args.only is None else [t.strip() for t in args.only.split(",") if t.strip()]
    lease = args.budget is not None
    if only is not None:
        titles = [step.title for step in runnable_steps(sys.executable, Path("."), args.quick, lease)]
        unknown = [t for t in only if t not in titles]
        if unknown or not only:
            parser.error(f"--only: no step {', '.join(map(repr, unknown)) or 'given'}; the steps are: "
                         f"{', '.join(titles)}")

    deadline = None if args.budget is None else time.monotonic() + args.budget
    problem = gpu_problem()
    if problem:
        print(f"gpu-check: no usable NVIDIA GPU: {problem}.\n{NO_GPU_HINT}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    out_dir = Path(args.out or f"gpu-check-{started.replace(' ', '-').replace(':', '')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "gpu-check-report.md"
    facts = environment()
    print("\n".join(f"{name}: {value}" for name, value in facts), flush=True)
    done = []
    if only is not None:   # each as this run makes it (a --budget: as the lease did); the budget still stops them
        planned = [step for step in runnable_steps(sys.executable, out_dir, args.quick, lease) if step.title in only]
    elif lease:
        planned = lease_steps(sys.executable, out_dir)
    else:
        planned = steps(sys.executable, out_dir, args.quick)
    for step in planned:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < MIN_STEP_S and not step.skipped:
            step.skipped = f"not started: {max(left, 0):.0f} s of the --budget of {args.budget:g} s were left"
        done.append(step if step.skipped else run_step(step, left))
        write_report(report, facts, done, started)   # a report exists even if a later step hangs
    failed = [s.title for s in done if s.status == "FAIL"]
    passed = [s.title for s in done if s.status == "PASS"]
    print(f"\ngpu-check: {len(passed)} of {len(done)} steps passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + "".join(f"; {status}: {', '.join(s.title for s in done if s.status == status)}"
                    for status in ("CUT", "SKIPPED") if any(s.status == status for s in done)))
    print(f"gpu-check: report written to {report.resolve()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
