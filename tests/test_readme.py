"""The README's examples run as written: the usage example (on numpy, and on emu where
available) and the float16 training loop with GradScaler (on numpy)."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(marker: str) -> str:
    """The one ```python block of the README that contains `marker`."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of the README contain {marker!r}; expected one"
    return blocks[0]


def usage_example() -> str:
    return python_block("y_emu = ")


def float16_example() -> str:
    return python_block("GradScaler()")


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


def test_readme_float16_training_loop_runs():
    namespace = {}
    exec(compile(float16_example(), str(README), "exec"), namespace)
    model, optimizer, scaler, losses = (namespace[k] for k in ("model", "optimizer", "scaler", "losses"))
    assert all(isinstance(loss, float) for loss in losses)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])   # it learned (about 2.2 -> 0.14)
    assert namespace["accuracy"] > 0.85                            # 0.95 on digits
    params = list(model.parameters())
    assert all(p.data.dtype == np.float16 and p.grad.dtype == np.float16 for p in params)
    # every step was taken (none overflowed at the initial scale), each with FP32 master weights
    assert scaler.get_scale() == 2.0 ** 16
    assert len(optimizer.state) == len(params)
    for p, state in zip(params, optimizer.state):
        assert state["master"].dtype == np.float32
        assert np.array_equal(state["master"].astype(np.float16), p.data)
