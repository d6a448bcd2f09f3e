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

# Rebuild exports/default from the FaceForensics++ videos and LFW photos in ../shared/data
# (research licences: the crops and the runs stay in build/, never in git). Every step is
# seeded. The model card (exports/default/MODEL_CARD.md) gives the candidates measured and why
# these two members.
FFPP ?= ../shared/data/ffpp-c23
LFW ?= ../shared/data/lfw-real
DEFAULT_BUILD := build/default
# Member 0: EfficientNet-Lite0 cut after blocks.4, every ImageNet layer frozen, only the linear
# head learns on FF++ (fine-tuning overfit the 60 training videos). Member 1: all of
# EfficientNet-Lite0 fine-tuned on LFW photos and their self-blended fakes only (no FF++ face),
# validated on the FF++ validation videos; its last epoch is used. Equal weights, each member
# calibrated on the FF++ validation split.
FROZEN := conv_stem,bn1,blocks.0,blocks.1,blocks.2,blocks.3,blocks.4
default-bundle: $(STAMP)
	$(BIN)/trainer prepare $(FFPP) --out $(DEFAULT_BUILD)/data --frames 16 --size 224 --seed 0
	mkdir -p $(DEFAULT_BUILD)/lfw-src/real
	find $(abspath $(LFW)) -maxdepth 1 -name '*.jpg' -exec ln -sf {} $(DEFAULT_BUILD)/lfw-src/real/ \;
	$(BIN)/trainer prepare $(DEFAULT_BUILD)/lfw-src --out $(DEFAULT_BUILD)/lfw --frames 1 --size 224 --split 1,0,0 --sbi 1 --seed 0
	rm -rf $(DEFAULT_BUILD)/lite0-mid $(DEFAULT_BUILD)/sbi-lfw
	$(BIN)/trainer fit --data $(DEFAULT_BUILD)/data --arch efficientnet_lite0_mid --method erm --freeze $(FROZEN) \
	  --size 224 --epochs 8 --optimizer adamw --lr 1e-3 --workers 1 --seed 0 --out $(DEFAULT_BUILD)/lite0-mid
	$(BIN)/trainer fit --data $(DEFAULT_BUILD)/lfw --val-data $(DEFAULT_BUILD)/data --arch efficientnet_lite0 --method erm \
	  --size 224 --epochs 4 --optimizer adamw --lr 3e-4 --workers 1 --seed 0 --out $(DEFAULT_BUILD)/sbi-lfw
	$(BIN)/trainer export $(DEFAULT_BUILD)/lite0-mid $(DEFAULT_BUILD)/sbi-lfw --checkpoint best,final --weight 1 --weight 1 \
	  --data $(DEFAULT_BUILD)/data --out exports/default --name ffpp-c23-lite0-mid+sbi-lfw --operating-point eer --force

# The model card's test-split figures for the bundle in exports/default (needs build/default/data
# from default-bundle). Attacks run on a seeded 32-crop subset: on the whole test split they
# take over an hour on this CPU.
default-bundle-eval: $(STAMP)
	rm -rf $(DEFAULT_BUILD)/eval-test $(DEFAULT_BUILD)/eval-test-attacks
	$(BIN)/trainer eval --bundle exports/default --data $(DEFAULT_BUILD)/data --split test --no-attacks --out $(DEFAULT_BUILD)/eval-test
	$(BIN)/trainer eval --bundle exports/default --data $(DEFAULT_BUILD)/data --split test --limit 32 --no-corruptions \
	  --heatmaps 0 --out $(DEFAULT_BUILD)/eval-test-attacks

bench: $(STAMP)
	$(BIN)/python bench/scan_throughput.py

clean:
	rm -rf $(VENV) demo build .pytest_cache
