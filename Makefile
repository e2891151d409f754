# mxmoe developer commands.  `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
CSRC_COMPUTE := $(filter-out %_py.c,$(wildcard csrc/*.c))
CTESTS := $(wildcard tests/c/*.c)

.PHONY: install demo test test-python memcheck bench clean

# System GLPK (Debian: libglpk-dev), Python deps, then mxmoe itself, editable, built in place.
install:
	@if [ ! -f /usr/include/glpk.h ] && [ -z "$$MXMOE_GLPK_PREFIX" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libglpk-dev valgrind; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libglpk-dev valgrind; fi; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

demo: install
	$(PYTHON) -m mxmoe demo

test: install memcheck
	$(PYTHON) -m pytest -q tests

tests/c/mx_test_driver: $(CSRC_COMPUTE) $(CTESTS) $(wildcard csrc/*.h)
	$(CC) -std=c11 -O1 -g -fopenmp -D_GNU_SOURCE -Icsrc $(CSRC_COMPUTE) $(CTESTS) -lglpk -lm -o $@

# The C core alone, under valgrind: zero errors and zero leaks or it fails.
memcheck: tests/c/mx_test_driver
	OMP_NUM_THREADS=2 valgrind --quiet --error-exitcode=2 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect ./tests/c/mx_test_driver

clean:
	rm -rf build mxmoe/*.so tests/c/mx_test_driver
