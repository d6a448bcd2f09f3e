# Two commands on a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv when it is missing (pinned by constraints.txt) and are safe to re-run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test default-bundle bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Scan sample media the project makes itself with the default bundle. The samples include a
# corrupt file on purpose, so forensic exits 1 (a file could not be analysed); only 2 (bad
# usage or an unusable bundle) fails the demo.
demo: $(STAMP)
	$(BIN)/trainer synth --media demo/media
	$(BIN)/forensic scan demo/media --json demo/report.json; status=$$?; \
	  echo "forensic exit status $$status; JSON report in demo/report.json"; test $$status -ne 2

test: $(STAMP)
	$(BIN)/python -m pytest

# Rebuild exports/default (the placeholder bundle) from data the project makes itself.
default-bundle: $(STAMP)
	rm -rf build/placeholder
	$(BIN)/trainer synth --dataset build/placeholder/data --size 224 --per-class 60
	$(BIN)/trainer fit --data build/placeholder/data --arch efficientnet_lite0 --epochs 10 --out build/placeholder/run --seed 0
	$(BIN)/trainer export build/placeholder/run --out exports/default --name placeholder-astronaut-lite0 --force

bench: $(STAMP)
	$(BIN)/python bench/scan_throughput.py

clean:
	rm -rf $(VENV) demo build .pytest_cache
