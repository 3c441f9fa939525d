PY := .venv/bin/python
PIP := .venv/bin/pip
# torch/torchvision: the versions this machine offers from local disk (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-gpu run validate

setup:
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'

test:
	$(PY) -m pytest -q
	.venv/bin/mmrobust validate

test-gpu:
	$(PY) -m pytest -q -m gpu

run:
	.venv/bin/mmrobust run --model clip-tiny --attack pgd --defense none --n 256
