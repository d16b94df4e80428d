# The developer entry points. `make demo` and `make test` each run the idempotent set-up first
# (scripts/setup.sh: seconds when nothing changed), so on a fresh machine they are all you need.
#
# Every process started from here that may create a ROS node gets loopback-only DDS discovery,
# a throwaway log dir and (for tests) its own domain id: these are exported below rather than
# left to the developer's shell.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# One implementation of the safe environment (omnibind_ros/ros/env.py), sourced per recipe.
ROS_SAFE_ENV := source scripts/ros_env.sh &&
PYTEST_ARGS ?=
# Extra options of omnibind-bringup for `make demo`, e.g. DEMO_ARGS=--no-ui.
DEMO_ARGS ?=
# The demo's scenario (config/scenarios/<name>.yaml): hotplug_demo unplugs and replugs sensors;
# degraded_demo keeps them publishing but darkens the camera, puts the microphone in wind and
# the LiDAR in rain: `make demo SCENARIO=degraded_demo`.
SCENARIO ?= hotplug_demo
# Which model family the demo runs: a bundle under <cache>/bundles/ and the training config
# that builds it: BUNDLE=default (CAD + AF, seed 000), BUNDLE=binding (bound spaces with
# routers, seeds 001/003) or BUNDLE=unialign (one frozen ViT with MoE-LoRA, seed 002):
# `make demo BUNDLE=binding`.
BUNDLE ?= default
TRAIN_CONFIG_default := training/configs/sim_default.yaml
TRAIN_CONFIG_binding := training/configs/sim_binding.yaml
TRAIN_CONFIG_unialign := training/configs/sim_unialign.yaml
TRAIN_CONFIG = $(TRAIN_CONFIG_$(BUNDLE))
# Prints the state of the demo's bundle (<cache>/bundles/$(BUNDLE)): "ok", "missing", or
# "stale" (exported before bundles carried their logit scale: a re-export from the cached
# training run fixes it in seconds).
BUNDLE_STATE = $(PY) -c 'from omnibind_ros.core.bundle import default_bundle_dir, load_bundle; \
	d = default_bundle_dir().parent / "$(BUNDLE)"; ok = (d / "bundle.yaml").is_file(); \
	print("missing" if not ok else "ok" if load_bundle(d, verify=False).logit_scale else "stale")'
BUNDLE_DIR = $$($(PY) -c 'from omnibind_ros.core.bundle import default_bundle_dir; \
	print(default_bundle_dir().parent / "$(BUNDLE)")')

.PHONY: setup demo demo-world test preview dataset bench bench-runtime bench-bag lint clean help

help:
	@echo "make demo     set up (and build the default model bundle) if needed, then run"
	@echo "              perception on the simulated sensors through a hot-plug scenario;"
	@echo "              BUNDLE=binding runs the bound-spaces family (seeds 001/003) instead;"
	@echo "              SCENARIO=degraded_demo keeps the sensors publishing but degrades them"
	@echo "make demo-world  stream the simulated world through the preprocessing only"
	@echo "make test     set up if needed, then run the test suite (runtime tests without the"
	@echo "              training package, then the training tests)"
	@echo "make preview  write a PNG grid of every simulated modality"
	@echo "make dataset  generate the default simulated data set into the cache"
	@echo "make bench    print simulator throughput (benchmarks/bench_sim.py)"
	@echo "make bench-runtime  latency, hot-plug, baseline and soak of the running nodes"
	@echo "make bench-bag      offline bag-evaluation throughput and live-vs-offline agreement"
	@echo "make lint     ruff over the project"

setup:
	@bash scripts/setup.sh

# A bundle takes minutes to train on a CPU, once; later demos start in seconds.
demo: setup
	@if [ -z "$(TRAIN_CONFIG)" ]; then echo "[demo] unknown BUNDLE=$(BUNDLE) (default, binding, unialign)"; \
		exit 2; fi
	@state=$$($(BUNDLE_STATE)) || exit 1; \
	if [ "$$state" = stale ]; then echo "[demo] re-exporting the $(BUNDLE) model bundle"; \
		$(PY) -m omnibind_train.cli export --config $(TRAIN_CONFIG) || state=missing; fi; \
	if [ "$$state" = missing ]; then echo "[demo] no $(BUNDLE) model bundle yet: building it"; \
		$(PY) -m omnibind_train.cli all --config $(TRAIN_CONFIG) || exit 1; fi
	@$(ROS_SAFE_ENV) $(PY) -m omnibind_ros.tools.bringup --scenario $(SCENARIO) --duration 40 \
		--bundle "$(BUNDLE_DIR)" $(DEMO_ARGS)

demo-world: setup
	@$(ROS_SAFE_ENV) $(PY) -m omnibind_ros.tools.demo

# Two runs: the runtime's tests (test/) with the training package made unimportable
# (OMNIBIND_BLOCK_TRAINING=1, test/conftest.py), as a colcon install without torch would run
# them; then the training package's own tests.
test: setup
	@$(ROS_SAFE_ENV) OMNIBIND_BLOCK_TRAINING=1 $(PY) -m pytest test $(PYTEST_ARGS)
	@$(ROS_SAFE_ENV) $(PY) -m pytest training/tests $(PYTEST_ARGS)

preview: setup
	@$(PY) -m omnibind_ros.sim.cli preview

dataset: setup
	@$(PY) -m omnibind_ros.sim.cli generate --config config/sim_dataset.yaml

bench: setup
	@$(PY) benchmarks/bench_sim.py

bench-runtime: setup
	@for sub in "latency" "latency --two-process" "hotplug --two-process" "baseline" \
		"soak --minutes 2"; do $(ROS_SAFE_ENV) $(PY) benchmarks/bench_runtime.py $$sub || exit 1; done

bench-bag: setup
	@$(ROS_SAFE_ENV) $(PY) benchmarks/bench_bag.py

lint: setup
	@$(PY) -m ruff check omnibind_ros training test benchmarks

clean:
	rm -rf build install log .pytest_cache .hypothesis
