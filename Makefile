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

# Rebuild exports/default from the FaceForensics++ videos in ../shared/data (research licence:
# the crops and the run stay in build/, never in git). Every step is seeded. The model card
# (exports/default/MODEL_CARD.md) gives the candidates measured on validation and why this one.
FFPP ?= ../shared/data/ffpp-c23
DEFAULT_BUILD := build/default
# EfficientNet-Lite0 cut after blocks.4, every ImageNet layer frozen: only the linear head
# learns (middle-level features generalised best; fine-tuning overfit 60 training videos).
FROZEN := conv_stem,bn1,blocks.0,blocks.1,blocks.2,blocks.3,blocks.4
default-bundle: $(STAMP)
	$(BIN)/trainer prepare $(FFPP) --out $(DEFAULT_BUILD)/data --frames 16 --size 224 --seed 0
	rm -rf $(DEFAULT_BUILD)/lite0-mid $(DEFAULT_BUILD)/eval-test
	$(BIN)/trainer fit --data $(DEFAULT_BUILD)/data --arch efficientnet_lite0_mid --method erm --freeze $(FROZEN) \
	  --size 224 --epochs 8 --optimizer adamw --lr 1e-3 --workers 1 --seed 0 --out $(DEFAULT_BUILD)/lite0-mid
	$(BIN)/trainer export $(DEFAULT_BUILD)/lite0-mid --out exports/default --name ffpp-c23-lite0-mid \
	  --operating-point eer --force
	$(BIN)/trainer eval --bundle exports/default --data $(DEFAULT_BUILD)/data --split test --out $(DEFAULT_BUILD)/eval-test

bench: $(STAMP)
	$(BIN)/python bench/scan_throughput.py

clean:
	rm -rf $(VENV) demo build .pytest_cache
