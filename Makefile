# Two commands on a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv when it is missing (pinned by constraints.txt) and are safe to re-run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test default-bundle default-bundle-eval bench clean

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

# Rebuild exports/default from the FaceForensics++ videos and DFDC face-crop pairs in ../shared/data
# (research licences: the crops and the runs stay in build/, never in git). Every step is seeded.
# scripts/default_bundle.sh holds the recipe (resumable: run it again after an interruption); the
# model card (exports/default/MODEL_CARD.md) gives the candidates measured and why this one. The
# bundle is an equal-weight ensemble of two networks, EfficientNet-Lite0 and EfficientNet-Lite2, each
# the five grouped-fold models' weights averaged (a model soup) after its own DFDC stage 1, both
# calibrated together on the DFDC validation pairs, which no fold model trained on. The Lite2 build
# reuses the Lite0 build's crops (`trainer prepare` is deterministic; a link, not a second copy).
# A resolution candidate is `make default-bundle SIZE=160` (its own build folders; it overwrites exports/default).
# To skip the Lite0 stage 1 (about 100 min), start build/d224 from the committed checkpoint: checkpoints/README.md.
FFPP ?= ../shared/data/ffpp-c23
DFDC ?= ../shared/data/dfdc-faces
SIZE ?= 224
DEFAULT_BUILD ?= build/d$(SIZE)
LITE2_BUILD := $(DEFAULT_BUILD)-lite2
DATA := $(DEFAULT_BUILD)/data
VIEWS := $(DEFAULT_BUILD)/views
default-bundle: $(STAMP)
	scripts/default_bundle.sh $(DEFAULT_BUILD) $(SIZE) $(FFPP) $(DFDC)
	mkdir -p $(LITE2_BUILD)
	[ -e $(LITE2_BUILD)/data ] || ln -s $(abspath $(DATA)) $(LITE2_BUILD)/data
	ARCH=efficientnet_lite2 scripts/default_bundle.sh $(LITE2_BUILD) $(SIZE) $(FFPP) $(DFDC)
	$(BIN)/trainer export $(DEFAULT_BUILD)/soup $(LITE2_BUILD)/soup --checkpoint last --weight 1 --weight 1 \
	  --data $(VIEWS)/dfdc-train --out exports/default \
	  --name ffpp-dfdc-lite0+lite2-$(SIZE)-nosbi-s1e5-h264-soup5 --operating-point eer --force

# The model card's test-split figures for the bundle in exports/default (needs default-bundle's data):
# clean and corrupted per source, then every attack with the masking checks on a seeded 128-crop subset.
default-bundle-eval: $(STAMP)
	rm -rf $(DEFAULT_BUILD)/eval-test-ffpp $(DEFAULT_BUILD)/eval-test-dfdc $(DEFAULT_BUILD)/eval-test-attacks
	$(BIN)/trainer eval --bundle exports/default --data $(VIEWS)/ffpp --split test --no-attacks --out $(DEFAULT_BUILD)/eval-test-ffpp
	$(BIN)/trainer eval --bundle exports/default --data $(VIEWS)/dfdc --split test --no-attacks --heatmaps 0 --out $(DEFAULT_BUILD)/eval-test-dfdc
	$(BIN)/trainer eval --bundle exports/default --data $(DATA) --split test --limit 128 --no-corruptions \
	  --heatmaps 0 --out $(DEFAULT_BUILD)/eval-test-attacks

bench: $(STAMP)
	$(BIN)/python bench/scan_throughput.py

clean:
	rm -rf $(VENV) demo build .pytest_cache
