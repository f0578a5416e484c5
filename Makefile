# energyprof: the README's two commands are `make demo` and `make test`.
# Both work on a fresh Debian machine as root: system packages, .venv, torch, the package.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
# System packages: build (pkg-config, libplist-dev, libsqlite3-dev), C checks (valgrind,
# clang for libFuzzer), browser tests of the report and the dashboard (chromium, chromium-driver for
# Selenium), terminal tests (tmux), visudo checks of the generated sudoers rule (sudo).
DEB_PKGS := pkg-config libplist-dev libsqlite3-dev gcc g++ valgrind clang libclang-rt-14-dev chromium chromium-driver tmux sudo
CSRC := $(wildcard csrc/*/*.c csrc/*/*.h csrc/*/*.cpp)
# The C rooms (see docs/architecture.md); the C tests link every part except the CPython face.
C_INC := -Icsrc/kernels -Icsrc/sources -Icsrc/threads -Icsrc/module
C_PARTS = $(wildcard csrc/kernels/*.c csrc/sources/*.c csrc/threads/*.c)
# Python tests run against the sanitizer build of the extension (make sanitize).
SANITIZE_TESTS := test_core_basics.py test_integrate.py test_sampler.py test_plist.py test_powermetrics.py \
  test_store.py test_hooks.py test_torchshim.py test_attribution.py test_session.py test_nvml.py test_nvml_devices.py test_rapl.py \
  test_estimate.py test_ioreport.py test_arch.py

.PHONY: all setup sysdeps venv build test demo ctest fuzz-replay sanitize valgrind fuzz bench clean

all: build

sysdeps:
	@bash scripts/install_sysdeps.sh $(DEB_PKGS)

$(VENV)/.deps-ok: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# The CPU build of torch on this disk, before anything that depends on torch.
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q numpy
	$(PIP) install -q --no-build-isolation -e '.[test]'
	touch $@

venv: sysdeps $(VENV)/.deps-ok

# Build the extension in place; flock serialises concurrent builds in one tree.
build: venv
	flock /tmp/energyprof-build.lock $(PY) setup.py -q build_ext --inplace

setup: build

test: setup ctest fuzz-replay
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

demo: setup
	$(PY) -m energyprof demo

# C-level tests: the kernels without Python, as one test program.
build/ctest/ep_ctest: $(CSRC) tests/c/*.c
	@mkdir -p build/ctest
	$(CC) -std=c11 -g -O1 -D_GNU_SOURCE $(CTEST_CFLAGS) $(C_INC) $$(pkg-config --cflags libplist-2.0 sqlite3) \
	  tests/c/*.c $(C_PARTS) -o $@ \
	  $$(pkg-config --libs libplist-2.0 sqlite3) -lpthread -ldl -lm $(CTEST_LDFLAGS)

ctest: sysdeps build/ctest/ep_ctest
	build/ctest/ep_ctest

sanitize: venv
	@mkdir -p build/asan
	$(CC) -std=c11 -g -O1 -D_GNU_SOURCE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
	  $(C_INC) $$(pkg-config --cflags libplist-2.0 sqlite3) tests/c/*.c $(C_PARTS) \
	  -o build/asan/ep_ctest $$(pkg-config --libs libplist-2.0 sqlite3) -lpthread -ldl -lm
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build/asan/ep_ctest
	# The extension itself, built with the sanitizers into build/asan-ext (beside, not over,
	# the normal build), runs the Python tests of every C-backed part.  CPython is not
	# instrumented, so the runtime is preloaded and leak checking is left to the C tests.
	rm -rf build/asan-ext && mkdir -p build/asan-ext
	EP_SANITIZE=1 $(PY) setup.py -q build_ext -b build/asan-ext -t build/asan-tmp
	cd energyprof && cp --parents $$(find . -name "*.py") ../build/asan-ext/energyprof/
	cd build/asan-ext && LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=$$PWD \
	  $(abspath $(PY)) -m pytest -q -p no:cacheprovider $(addprefix $(CURDIR)/tests/,$(SANITIZE_TESTS))

valgrind: sysdeps build/ctest/ep_ctest
	valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --suppressions=tests/c/valgrind-python.supp build/ctest/ep_ctest

# The fuzz corpus (the saved seeds and findings, plus the real captures) replayed once
# through the fuzz target under ASan/UBSan with gcc, no libFuzzer: part of make test.
FUZZ_SRC := tests/fuzz/fuzz_plist.c csrc/kernels/ep_plist.c csrc/kernels/ep_errors.c csrc/kernels/ep_sample.c
FUZZ_CORPUS := tests/fuzz/corpus tests/data/powermetrics
build/fuzz/replay: $(FUZZ_SRC) tests/fuzz/replay_main.c csrc/kernels/*.h
	@mkdir -p build/fuzz
	$(CC) -std=c11 -g -O1 -D_GNU_SOURCE -fsanitize=address,undefined -fno-sanitize-recover=all -Icsrc/kernels \
	  $$(pkg-config --cflags libplist-2.0) tests/fuzz/replay_main.c $(FUZZ_SRC) -o $@ $$(pkg-config --libs libplist-2.0)

fuzz-replay: sysdeps build/fuzz/replay
	ASAN_OPTIONS=detect_leaks=1 build/fuzz/replay $(FUZZ_CORPUS)

# libFuzzer for FUZZ_SECONDS (60), new findings kept in build/fuzz/corpus; CI runs it.
fuzz: sysdeps
	@mkdir -p build/fuzz/corpus
	clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Icsrc/kernels $$(pkg-config --cflags libplist-2.0) \
	  tests/fuzz/fuzz_plist.c csrc/kernels/ep_plist.c csrc/kernels/ep_errors.c csrc/kernels/ep_sample.c -o build/fuzz/fuzz_plist \
	  $$(pkg-config --libs libplist-2.0)
	build/fuzz/fuzz_plist -max_total_time=$${FUZZ_SECONDS:-60} -max_len=65536 build/fuzz/corpus $(FUZZ_CORPUS)

# Every benchmark script (not the shared _report.py), each saving its page in docs/benchmarks/
# (--write), then the summary page docs/benchmarks.md from those pages.
bench: build
	for b in benchmarks/[!_]*.py; do [ "$$b" = benchmarks/collect.py ] && continue; echo "== $$b"; $(PY) $$b --write || exit 1; done
	$(PY) benchmarks/collect.py

clean:
	rm -rf build energyprof/_core*.so *.egg-info
