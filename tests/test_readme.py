"""The README's usage example runs as written (on numpy, and on emu where available)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def usage_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "import cnn_gpu" in b)
    return example


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make train", "make test"]


def test_readme_usage_example_runs():
    namespace = {}
    exec(compile(usage_example(), str(README), "exec"), namespace)
    y, y_emu = namespace["y"], namespace["y_emu"]
    assert y.shape == (8, 16, 32, 32) and y.dtype == "float32"
    assert abs(y_emu - y).max() <= 1e-4 * abs(y).max()
    assert namespace["loss"] > 0
    assert all(p.grad is not None and abs(p.grad).sum() > 0 for p in namespace["model"].parameters())
