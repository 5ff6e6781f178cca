# The test command is `make check`: lint, type-check, then every test tier.
PYTHON ?= python3

.PHONY: check lint typecheck test test-fast realgpu packages bench clean sim-lib FORCE

check: lint typecheck test

lint:
	$(PYTHON) -m ruff check migrestore tests bench
	$(PYTHON) -m ruff format --check migrestore tests bench

typecheck:
	$(PYTHON) -m mypy

test:
	$(PYTHON) -m pytest

# Everything but the real-systemd, packaging and fleet tiers: minutes, no root needed.
test-fast:
	$(PYTHON) -m pytest -m "not system and not packaging and not fleet"

# Read-only checks on this machine's NVIDIA GPUs (docs/REALGPU.md); skips without a driver.
realgpu:
	$(PYTHON) -m pytest -m realgpu tests/realgpu

packages:
	$(PYTHON) packaging/build.py --out dist

bench:
	$(PYTHON) -m bench

# The simulated libnvidia-ml.so.1 (docs/SIMULATOR.md, "The C library"): C sources in
# csrc/, built with the system C compiler against the libpython of $(PYTHON).
CC ?= cc
SIM_DIR := build/sim
SIM_CFLAGS := -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden

sim-lib: $(SIM_DIR)/libnvidia-ml.so.1 $(SIM_DIR)/libnvidia-ml.so

$(SIM_DIR)/sim_config.h: csrc/config.py FORCE
	@mkdir -p $(SIM_DIR)
	$(PYTHON) csrc/config.py $@

$(SIM_DIR)/libnvidia-ml.so.1: csrc/nvml_sim.c csrc/nvml_abi.h $(SIM_DIR)/sim_config.h
	$(CC) $(SIM_CFLAGS) -shared -Wl,-soname,libnvidia-ml.so.1 -I$(SIM_DIR) -Icsrc \
		-o $@.tmp.$$$$ csrc/nvml_sim.c -ldl -lpthread && mv -f $@.tmp.$$$$ $@

$(SIM_DIR)/libnvidia-ml.so: $(SIM_DIR)/libnvidia-ml.so.1
	ln -sfn libnvidia-ml.so.1 $@

FORCE:

clean:
	rm -rf dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
