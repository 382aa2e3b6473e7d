# Attribution-preserving compression study. Quick start:
#   make all     # environment, data, every stage, tables and figures (PROFILE=default)
#   make test    # the test suite
# PROFILE=smoke|default|voc selects the profile; VOC_ROOT=/path/to/VOCdevkit/VOC2012 uses
# real VOC data; TEACHER_WEIGHTS=/path/to/vgg16_bn.pth initialises the teacher (voc).

PROFILE ?= default
SEED ?= 0
VOC_ROOT ?=
TEACHER_WEIGHTS ?=
PYTHON ?= python3

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS := runs/$(PROFILE)
SYNTH_ROOT := data/synthvoc-$(PROFILE)
DATA_ROOT := $(if $(VOC_ROOT),$(VOC_ROOT),$(SYNTH_ROOT)/VOCdevkit/VOC2012)
# The data stamp: the synthetic manifest, or the real tree's class split file.
DATA_STAMP := $(if $(VOC_ROOT),$(VOC_ROOT)/ImageSets/Main/train.txt,$(DATA_ROOT)/synthvoc.json)
PAPERMILL := $(PY) -m papermill --log-output --no-progress-bar

# Execute notebook $(1) into $(2) with papermill; the executed copy appears only on success.
define run_notebook
	@mkdir -p $(dir $(2))
	$(PAPERMILL) $(1) $(dir $(2)).partial-$(notdir $(2)) $(3)
	@mv $(dir $(2)).partial-$(notdir $(2)) $(2)
endef

.PHONY: all venv data teacher test test-slow lint lab clean clean-runs help

all: teacher

help:
	@sed -n '1,6p' Makefile

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lab]'
	@touch $@

data: $(DATA_STAMP)
$(SYNTH_ROOT)/VOCdevkit/VOC2012/synthvoc.json: | $(STAMP)
	$(PY) -m attrlib.synthvoc --root $(SYNTH_ROOT) --profile $(PROFILE) --seed $(SEED)
ifneq ($(VOC_ROOT),)
$(VOC_ROOT)/ImageSets/Main/train.txt:
	$(error VOC_ROOT=$(VOC_ROOT) has no ImageSets/Main/train.txt; point VOC_ROOT at VOCdevkit/VOC2012)
endif

teacher: $(RUNS)/teacher/01_teacher.ipynb
$(RUNS)/teacher/01_teacher.ipynb: notebooks/01_teacher.ipynb $(DATA_STAMP) | $(STAMP)
	$(call run_notebook,$<,$@,-p profile $(PROFILE) -p seed $(SEED) -p data_root $(DATA_ROOT) -p out_dir $(RUNS)/teacher -p weights '$(TEACHER_WEIGHTS)')

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check attrlib tests benchmarks
	$(PY) -m ruff format --check attrlib tests benchmarks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

# Removes caches and generated data; finished runs stay (see clean-runs).
clean:
	rm -rf data/synthvoc-* .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs:
	@echo "This deletes every result under runs/$(PROFILE)."; \
	read -p "Type the profile name to confirm: " answer; \
	[ "$$answer" = "$(PROFILE)" ] && rm -rf runs/$(PROFILE) || echo "not deleted"
