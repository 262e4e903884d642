# Two entry points (README): `make train` and `make test`; each sets up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pytest-xdist workers; CI machines have 2 cores.
JOBS   ?= 2

.PHONY: train test test-cupy-sim venv test-venv torch bench gpu-check sass-table clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

train: $(VENV)/.installed
	$(VENV)/bin/cnn-gpu train $(ARGS)

# The PyTorch oracle tests run when torch is importable; `make torch` installs the pinned CPU build.
torch: $(VENV)/.installed-test
	$(PY) -m pip install -q torch==2.13.0

test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(JOBS) $(ARGS)

# The whole suite with tests/cupy_sim as CuPy (the cuda backend's Python on the CPU), but for what
# needs a real GPU: loading the checked CUBINs, tc_plans' timing of every plan. CUPY_SIM_ARCH=90 for sm_90.
test-cupy-sim: $(VENV)/.installed-test
	PYTHONPATH=tests/cupy_sim PYTHONWARNINGS=ignore::RuntimeWarning $(PY) -m pytest -n $(JOBS) -p no:cacheprovider \
		--deselect tests/test_reliability.py::test_the_gpu_runs_the_checked_builds \
		--deselect tests/test_roofline.py::test_tc_plans_put_each_choice_beside_its_alternatives \
		--deselect tests/test_cupy_sim.py $(ARGS)

bench: $(VENV)/.installed-test
	$(VENV)/bin/cnn-gpu bench $(ARGS)

# GPU acceptance run on an NVIDIA machine with CuPy (no network needed): CUDA test sweep, check --thorough,
# kernels, bench --shapes resnet, a short train; one markdown report. ARGS=--quick for a rehearsal.
gpu-check:
	scripts/gpu_check.sh $(ARGS)

# The README's SASS table: hot-loop instruction mix of the conv GEMM kernels on sm_90 (no GPU needed).
sass-table: $(VENV)/.installed-test
	@$(VENV)/bin/cnn-gpu kernels --sass --arch sm_90 --family conv2d_fprop,conv2d_dgrad,conv2d_wgrad,conv2d_tc --markdown

clean:
	rm -rf $(VENV) build dist .pytest_cache .benchmarks
