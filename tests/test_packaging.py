"""The built wheel ships the CUDA sources and finds them once installed outside the checkout."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, cnn_gpu, cnn_gpu.backend as b
# Every source resolves its #include "x.cuh" headers from the installed package.
sources = {p.stem: b.kernel_source(p.stem) for p in b.kernel_files()}
print(json.dumps({"package": cnn_gpu.__file__, "kernel_dir": str(b.kernel_dir()),
                  "kernels": sorted(p.name for p in b.kernel_files()),
                  "unresolved": [name for name, text in sources.items() if "#include" in text]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_and_finds_kernels(tmp_path):
    repo_kernels = sorted(p.name for p in (REPO / "kernels").glob("*.cu"))
    assert repo_kernels, "the checkout has no kernels/*.cu to ship"
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(dist), str(REPO)], check=True, cwd=tmp_path,
                   timeout=500)
    wheels = list(dist.glob("cnn_gpu-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheels[0])], check=True,
                   cwd=tmp_path, timeout=300)

    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("CNN_GPU_BACKEND", None)
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(target), f"imported {found['package']}, not the installed wheel"
    assert Path(found["kernel_dir"]) == target / "cnn_gpu" / "kernels"
    assert found["kernels"] == repo_kernels
    assert found["unresolved"] == []

    cli = subprocess.run([sys.executable, "-m", "cnn_gpu", "train", "--help"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "--max-batches" in cli.stdout, cli.stderr
