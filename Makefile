PY := .venv/bin/python
PIP := .venv/bin/pip
# torch/torchvision: the versions this machine offers from local disk (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-gpu lint-imports run validate leaderboard leaderboard-stores nightly reproduce wheel

setup:
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'

test: lint-imports
	$(PY) -m pytest -q
	.venv/bin/mmrobust validate

# the layers contract and no import cycles ([tool.importlinter] in pyproject.toml; README "Layers")
lint-imports:
	.venv/bin/lint-imports --no-cache

test-gpu:
	$(PY) -m pytest -q -m gpu

run:
	.venv/bin/mmrobust run --model clip-tiny --attack pgd --defense none --n 256

# Leaderboard release: `make leaderboard-stores` runs the manifest's `mmrobust benchmark` commands
# (resumable: finished cells are skipped), `make leaderboard` rebuilds results/leaderboard/v1/ from those stores.
# CARRY=results/leaderboard/v1 keeps the release's entries that no store holds (stores of only some entries).
LEADERBOARD ?= results/leaderboard/v1
MANIFEST ?= $(LEADERBOARD)/manifest.yaml
CARRY ?=
# JOBS=2: stores built side by side; COST=path.json: the measured wall time per entry and in total
JOBS ?= 1
COST ?=

leaderboard-stores:
	MMROBUST=.venv/bin/mmrobust $(PY) -m robustbench_mm.report.manifest run $(MANIFEST) --jobs $(JOBS) $(if $(COST),--cost $(COST))

leaderboard:
	.venv/bin/mmrobust leaderboard $$($(PY) -m robustbench_mm.report.manifest stores $(MANIFEST) $(if $(CARRY),--existing)) \
		--out $(LEADERBOARD) $(if $(CARRY),--carry $(CARRY))

# NIGHTLY_GRID=smoke make nightly: the CPU smoke grid end to end (see scripts/nightly.sh)
nightly:
	scripts/nightly.sh

# make reproduce (lists the specs) | make reproduce SPEC=mmcoa-table1 [ZOO=1]
reproduce:
	.venv/bin/mmrobust reproduce $(if $(SPEC),$(SPEC) $(if $(ZOO),--zoo),--list)

# dist/mmrobust-*.whl: a self-contained wheel (presets copied in by setup.py); installs with `pip install dist/*.whl`
wheel:
	$(PIP) wheel . --no-deps --no-build-isolation -w dist
