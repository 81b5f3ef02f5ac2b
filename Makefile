# mmq's commands. Every target installs what is missing first (tools/install.sh is idempotent).
PYTHON ?= python3
export PYTHON

.PHONY: install test demo smoke benchmark-quantizers

install:
	bash tools/install.sh

# pytest exits 5 when it collects no test: that is a failure here, never a silent pass.
test: install
	@$(PYTHON) -m pytest -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

smoke: install
	$(PYTHON) tools/smoke.py

demo: smoke

benchmark-quantizers: install
	$(PYTHON) benchmarks/quantizer_benchmark.py
