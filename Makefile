# The test command is `make check`: lint, type-check, then every test tier.
PYTHON ?= python3

.PHONY: check lint typecheck test test-fast realgpu packages bench clean

check: lint typecheck test

lint:
	$(PYTHON) -m ruff check migrestore tests bench
	$(PYTHON) -m ruff format --check migrestore tests bench

typecheck:
	$(PYTHON) -m mypy

test:
	$(PYTHON) -m pytest

# Everything but the real-systemd and packaging tiers: seconds, no root needed.
test-fast:
	$(PYTHON) -m pytest -m "not system and not packaging"

# Read-only checks on this machine's NVIDIA GPUs (docs/REALGPU.md); skips without a driver.
realgpu:
	$(PYTHON) -m pytest -m realgpu tests/realgpu

packages:
	$(PYTHON) packaging/build.py --out dist

bench:
	$(PYTHON) -m bench

clean:
	rm -rf dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
