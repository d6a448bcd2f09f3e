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
# bundle is an equal-weight ensemble of two EfficientNet-Lite0 networks, each the five grouped-fold
# models' weights averaged (a model soup): one fine-tuned by ERM from an eight-epoch DFDC stage 1, the
# other by gradient regularisation (r 0.5) from a five-epoch stage 1; both calibrated together on the
# DFDC validation pairs, which no fold model trained on. The second build reuses the first build's
# crops (`trainer prepare` is deterministic; a link, not a second copy).
# A resolution candidate is `make default-bundle SIZE=160` (its own build folders; it overwrites exports/default).
# To skip the two stage 1s (about 6 h), start both builds from the committed checkpoints: checkpoints/README.md.
FFPP ?= ../shared/data/ffpp-c23
DFDC ?= ../shared/data/dfdc-faces
SIZE ?= 224
DEFAULT_BUILD ?= build/d$(SIZE)
GRADREG_BUILD := $(DEFAULT_BUILD)-gradreg
DATA := $(DEFAULT_BUILD)/data
VIEWS := $(DEFAULT_BUILD)/views
default-bundle: $(STAMP)
	STAGE1_EPOCHS=8 scripts/default_bundle.sh $(DEFAULT_BUILD) $(SIZE) $(FFPP) $(DFDC)
	mkdir -p $(GRADREG_BUILD)
	[ -e $(GRADREG_BUILD)/data ] || ln -s $(abspath $(DATA)) $(GRADREG_BUILD)/data
	FOLD_METHOD=gradreg FOLD_OPTIONS=r=0.5 scripts/default_bundle.sh $(GRADREG_BUILD) $(SIZE) $(FFPP) $(DFDC)
	$(BIN)/trainer export $(DEFAULT_BUILD)/soup $(GRADREG_BUILD)/soup --checkpoint last --weight 1 --weight 1 \
	  --data $(VIEWS)/dfdc-train --out exports/default \
	  --name ffpp-dfdc-lite0x2-$(SIZE)-s1e8+gradreg05-h264-soup5 --operating-point eer --force

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
