# Attribution-preserving compression study. `make help` lists every target and variable.
#   make all PROFILE=smoke   # the whole study in about a minute (tiny networks)
#   make all                 # the default study (about 100 min on 2 cores)
#   make test                # the test suite

PROFILE ?= default
SET ?=
SEED ?= 0  # of the synthetic data set
VOC_ROOT ?=
TEACHER_WEIGHTS ?=
PYTHON ?= python3
# Runs of the compression grid execute side by side: JOBS at a time, each with THREADS torch
# threads (small networks use two cores poorly, two runs use them well). One job on a GPU,
# unless GPUS lists the GPUs to use: then one job per GPUS_PER_RUN of them.
NCPU := $(shell nproc 2>/dev/null || echo 1)
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
GPUS ?=
NPROC ?=
LAUNCH ?=
GPUS_PER_RUN := $(or $(NPROC),1)
JOBS ?= $(if $(GPUS),$(shell echo $$(( $(words $(GPUS)) / $(GPUS_PER_RUN) > 0 ? $(words $(GPUS)) / $(GPUS_PER_RUN) : 1 ))),$(if $(GPU),1,$(shell echo $$(( $(NCPU) < 8 ? $(NCPU) : 8 )))))
JOBS := $(JOBS)
THREADS ?= $(shell echo $$(( $(NCPU) / $(JOBS) > 0 ? $(NCPU) / $(JOBS) : 1 )))
THREADS := $(THREADS)
MAKEFLAGS += -j$(JOBS)

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The profile: a built-in name (attrlib/profiles/<name>.yaml) or a user's .yaml file, plus
# SET="field=value ..." overrides. Its runs go to runs/$(NAME): the profile's name, and with
# SET a short hash of it, so a changed setting never lands among finished runs of another.
NO_PROFILE_GOALS := help clean venv test test-slow lint lab lab-install
PROFILE_FILE := $(if $(filter %.yaml %.yml,$(PROFILE)),$(PROFILE),attrlib/profiles/$(PROFILE).yaml)
PROFILE_NAME := $(basename $(notdir $(PROFILE_FILE)))
ifneq ($(filter-out $(NO_PROFILE_GOALS),$(or $(MAKECMDGOALS),all)),)
ifeq ($(wildcard $(PROFILE_FILE)),)
$(error PROFILE=$(PROFILE): no such profile; give smoke, default, replicated, voc or the path of a .yaml file (copy attrlib/profiles/default.yaml to start one))
endif
endif
SET_HASH := $(if $(strip $(SET)),-$(shell printf '%s' '$(strip $(SET))' | sha1sum | cut -c1-8))
NAME ?= $(PROFILE_NAME)$(SET_HASH)
RUNS := runs/$(NAME)
# data only depends on the synth fields: other overrides share the profile's data set
SYNTH_ROOT := data/synthvoc-$(if $(findstring synth,$(SET)),$(NAME),$(PROFILE_NAME))
DATA_ROOT := $(if $(VOC_ROOT),$(VOC_ROOT),$(SYNTH_ROOT)/VOCdevkit/VOC2012)
# The data stamp: the synthetic manifest, or the real tree's class split file.
DATA_STAMP := $(if $(VOC_ROOT),$(VOC_ROOT)/ImageSets/Main/train.txt,$(DATA_ROOT)/synthvoc.json)
# papermill, strictly: unknown parameters are refused and the kernel dies with the runner
PAPERMILL := $(PY) -m attrlib.nbrun

# Wall time per stage: a timed recipe runs under $(call claim,TARGET,,STAGE), which appends
# the start and end of its command to $(TIMINGS_LOG) (plain shell and date: the venv recipe
# runs before the venv's python exists); the paper rule folds the log into
# $(RUNS)/timings.csv (spans, not sums, over a stage's runs; a resumed run adds up its
# invocations: see attrlib/timing.py).
TIMINGS_LOG := $(RUNS)/.timings.log
FOLD_TIMINGS = flock $(RUNS)/.timings.csv.lock $(PY) -m attrlib.timing fold $(TIMINGS_LOG) $(RUNS)/timings.csv
TIMING_RUN := $(shell echo "$$(date +%s)-$$$$")
# the stage of a run under $(RUNS): its first folder below its teacher's (distill, ...)
stage_of = $(firstword $(filter-out teacher-s%,$(subst /, ,$(patsubst $(RUNS)/%,%,$(1)))))

# Scaling out, with Make's own parallelism for the grid and no scheduler of our own:
# - NPROC=n: the training stages and the evaluation run the notebook runner under
#   `torchrun --standalone --nproc_per_node=n`: n ranks, each a runner with its own kernel
#   executing the whole notebook (the kernel inherits RANK, WORLD_SIZE, LOCAL_RANK,
#   MASTER_ADDR, MASTER_PORT from its runner); the stage joins them into one DDP run
#   (attrlib.distributed): rank 0 alone validates and writes.
#   With --rank-output only rank 0 writes the .partial- file; the other ranks write a hidden
#   .rank<k>- copy beside it and delete it (attrlib/nbrun.py). The recipe moves rank 0's into
#   place only when torchrun, so every rank, succeeded. The paper runs once, without torchrun.
# - GPUS="0 1 ...": a grid run takes the first GPUS_PER_RUN GPUs whose lock in GPU_LOCKS is
#   free (scripts/with_gpu.sh, flock) and runs with CUDA_VISIBLE_DEVICES set to them, holding
#   the locks until it exits; JOBS defaults to the number that fit, so two runs never share
#   a GPU. The teacher, its targets and the evaluation run alone and take the first ones.
# - LAUNCH="srun ...": prefixes every run of a stage that trains or evaluates (teacher,
#   targets, grid, evaluation), so each becomes a cluster job; Make still keeps the graph,
#   resume and skips what is finished. The launcher assigns GPUs, so GPUS is for one node.
TORCHRUN ?= $(VENV)/bin/torchrun
GPU_LOCKS ?= $(RUNS)
GRID_STAGES := distill prune_oneshot prune_iterative quantize
GPU_STAGES := teacher targets evaluate $(GRID_STAGES)
TORCHRUN_STAGES := teacher evaluate $(GRID_STAGES)
empty :=
space := $(empty) $(empty)
comma := ,
FIRST_GPUS := $(subst $(space),$(comma),$(wordlist 1,$(GPUS_PER_RUN),$(GPUS)))
ifneq ($(and $(GPUS),$(LAUNCH)),)
$(error GPUS and LAUNCH together: the launcher assigns the GPUs of a cluster job; give one)
endif
ifneq ($(GPUS),)
ifneq ($(words $(wordlist 1,$(GPUS_PER_RUN),$(GPUS))),$(GPUS_PER_RUN))
$(error NPROC=$(NPROC) processes per run, each on a GPU, but GPUS lists only "$(GPUS)")
endif
endif
# the command prefix and the notebook runner of stage $(1)'s runs
run_prefix = $(if $(GPUS),$(if $(filter $(GRID_STAGES),$(1)),scripts/with_gpu.sh $(GPU_LOCKS) $(GPUS_PER_RUN) "$(GPUS)",$(if $(filter $(GPU_STAGES),$(1)),env CUDA_VISIBLE_DEVICES=$(FIRST_GPUS)))) $(if $(filter $(GPU_STAGES),$(1)),$(LAUNCH))
notebook_runner = $(if $(and $(NPROC),$(filter $(TORCHRUN_STAGES),$(1))),$(TORCHRUN) --standalone --nproc_per_node=$(NPROC) -m attrlib.nbrun --rank-output,$(PAPERMILL))

# One writer per target: a recipe that makes $(1) runs under $(1)'s lock (scripts/claim.sh),
# so that two makes started on one runs folder (a resubmitted cluster job) never run it
# twice: the second waits, then finds it made. $(2): the file its command writes, renamed to
# $(1) on success; $(3): the stage it is timed as; $(4): the lock file, if not beside $(1).
claim = scripts/claim.sh $(if $(2),-m $(2)) $(if $(3),-t '$(TIMINGS_LOG) $(3) $(TIMING_RUN)') $(if $(4),-l $(4)) $(1) $^ --

# Execute notebook $(1) into $(2) with papermill (parameters $(3), environment $(4)); the
# executed copy appears only on success. Timed as the stage its output folder names.
define run_notebook
	@mkdir -p $(dir $(2)) $(RUNS)
	$(4) $(call claim,$(2),$(dir $(2)).partial-$(notdir $(2)),$(call stage_of,$(2))) $(call run_prefix,$(call stage_of,$(2))) $(call notebook_runner,$(call stage_of,$(2))) $(1) $(dir $(2)).partial-$(notdir $(2)) $(3)
endef

# The study's grid comes from the profile itself (attrlib/config.py, written once; run names:
# distill/x<width>-<method>-s<seed>, prune_oneshot/p<rate>-<method>-s<seed>,
# prune_iterative/<method>-s<seed>, quantize/w<bits>-<method>-s<seed>; the method words and
# their notebook parameters are attrlib/study.py's COMPRESSION). make writes the included file first and restarts itself;
# goals that run no stage skip it (they need no venv).
GRID_MK := $(RUNS)/.grid.mk
NO_GRID_GOALS := $(NO_PROFILE_GOALS) clean-runs results tensorboard
# The resolved profile, every field (what the runs of $(RUNS) were made with), rewritten
# only when it changes: the stages depend on it. Its recipe runs every time, and refuses
# real data with a synthetic profile and the reverse before anything is written.
PROFILE_STAMP := $(RUNS)/profile.yaml
$(PROFILE_STAMP): FORCE | $(STAMP)
	@$(VENV)/bin/python -m attrlib.profiles show $(PROFILE) --set '$(SET)' --into $@ \
		--data $(if $(VOC_ROOT),real,synthetic) $(if $(TEACHER_WEIGHTS),--weights)
.PHONY: FORCE
FORCE:
# What finished runs depend on: the resolved profile without the grid's lists. The teachers
# and every run depend on it, so an edit that only adds runs (a seed, a rate, a method)
# executes those alone, while an edit of a recipe reaches every run, which then refuses to
# reuse a finished run made otherwise. Made first from an existing study, it takes the
# resolved profile's time, so an upgrade reruns nothing.
RECIPE_STAMP := $(RUNS)/.recipes.yaml
$(RECIPE_STAMP): $(PROFILE_STAMP) | $(STAMP)
	@new=$$([ -f $@ ] || echo 1); \
	$(VENV)/bin/python -m attrlib.profiles show $(PROFILE) --set '$(SET)' --recipes --into $@ \
	&& { [ -z "$$new" ] || touch -r $(PROFILE_STAMP) $@; }
ifneq ($(filter-out $(NO_GRID_GOALS),$(or $(MAKECMDGOALS),all)),)
include $(GRID_MK)
endif
$(GRID_MK): $(PROFILE_STAMP) attrlib/study.py | $(STAMP)
	@mkdir -p $(dir $@)
	@$(VENV)/bin/python -m attrlib.study grid $(PROFILE) --set '$(SET)' > $@.$$$$.tmp && mv $@.$$$$.tmp $@
SEEDS ?= $(GRID_SEEDS)
TEACHER_SEEDS ?= $(GRID_TEACHER_SEEDS)

# Every teacher's runs live in its own folder, a study of their own: the teacher, its
# targets, its compressed runs and their evaluation (against that teacher's maps).
tree = $(RUNS)/teacher-s$(1)
TEACHER_NBS := $(foreach t,$(TEACHER_SEEDS),$(call tree,$(t))/teacher/01_teacher.ipynb)
ALL_TARGETS := $(foreach t,$(TEACHER_SEEDS),$(call tree,$(t))/teacher/targets.pt)
# Seeds per stage (default SEEDS): e.g. DISTILL_SEEDS=0 keeps one seed of distillation.
DISTILL_SEEDS ?= $(SEEDS)
PRUNE_SEEDS ?= $(SEEDS)
QUANTIZE_SEEDS ?= $(SEEDS)
# A run's folder name, notebook and parameters come from attrlib.study (GRID_MK's
# <stage>_run, <stage>_notebook and <stage>_params of (setting, method word, seed)).
distill_nb = $(call tree,$(1))/distill/$(call distill_run,$(2),$(3),$(4))/$(distill_notebook).ipynb
oneshot_nb = $(call tree,$(1))/prune_oneshot/$(call oneshot_run,$(2),$(3),$(4))/$(oneshot_notebook).ipynb
iterative_nb = $(call tree,$(1))/prune_iterative/$(call iterative_run,$(2),$(3))/$(iterative_notebook).ipynb
quantize_nb = $(call tree,$(1))/quantize/$(call quantize_run,$(2),$(3),$(4))/$(quantize_notebook).ipynb
distill_nbs = $(foreach s,$(DISTILL_SEEDS),$(foreach w,$(DISTILL_WIDTHS),$(foreach m,$(DISTILL_METHODS),$(call distill_nb,$(1),$(w),$(m),$(s)))))
oneshot_nbs = $(foreach s,$(PRUNE_SEEDS),$(foreach r,$(PRUNE_RATES),$(foreach m,$(ONESHOT_METHODS),$(call oneshot_nb,$(1),$(r),$(m),$(s)))))
iterative_nbs = $(foreach s,$(PRUNE_SEEDS),$(foreach m,$(ITERATIVE_METHODS),$(call iterative_nb,$(1),$(m),$(s))))
quantize_nbs = $(foreach s,$(QUANTIZE_SEEDS),$(foreach b,$(QUANTIZE_BITS),$(foreach m,$(QUANTIZE_METHODS),$(call quantize_nb,$(1),$(b),$(m),$(s)))))
DISTILL_NBS := $(foreach t,$(TEACHER_SEEDS),$(call distill_nbs,$(t)))
ONESHOT_NBS := $(foreach t,$(TEACHER_SEEDS),$(call oneshot_nbs,$(t)))
ITERATIVE_NBS := $(foreach t,$(TEACHER_SEEDS),$(call iterative_nbs,$(t)))
QUANTIZE_NBS := $(foreach t,$(TEACHER_SEEDS),$(call quantize_nbs,$(t)))
TEACHER_CKPT := $(call tree,$(firstword $(TEACHER_SEEDS)))/teacher/best.pt
EVAL_NBS := $(foreach t,$(TEACHER_SEEDS),$(call tree,$(t))/evaluate/05_evaluate.ipynb)
PAPER_NB := $(RUNS)/paper/06_paper.ipynb
PROFILE_ARGS = --profile $(PROFILE) --set '$(SET)'
PROFILE_PARAMS = -p profile $(PROFILE) $(if $(strip $(SET)),-p overrides '$(SET)')
COMMON = $(PROFILE_PARAMS) -p data_root $(DATA_ROOT)
# FAITH_METRICS=deletion,insertion,road: the faithfulness metrics notebook 05 scores (default:
# every registered one but the opt-in road, whose imputation would more than double the
# evaluation on a CPU; attrlib/faithfulness.py). EVAL_OVERWRITE=1: replace each model's
# eval.json made with other settings (refused otherwise).
FAITH_PARAMS = $(if $(FAITH_METRICS),-y "faith_metrics: [$(FAITH_METRICS)]")$(if $(filter 1,$(EVAL_OVERWRITE)), -p overwrite True)
# The grid's runs get THREADS threads however they are started (the same seed gives the same
# numbers only at the same thread count). Teachers, their targets and evaluations share the
# cores among as many of them as run at once; the paper uses every core.
GRID_ENV := OMP_NUM_THREADS=$(THREADS)
TEACHERS_AT_ONCE := $(shell n=$(words $(TEACHER_SEEDS)); echo $$(( n < $(JOBS) ? (n > 0 ? n : 1) : $(JOBS) )))
TEACHER_ENV := $(if $(filter-out 1,$(TEACHERS_AT_ONCE)),OMP_NUM_THREADS=$(shell echo $$(( $(NCPU) / $(TEACHERS_AT_ONCE) > 0 ? $(NCPU) / $(TEACHERS_AT_ONCE) : 1 ))))
# Each teacher's evaluation scores EVAL_WORKERS models at a time on a CPU, each in a process
# of its own with the evaluation's threads shared out (small networks use two threads poorly:
# benchmarks/evaluate_workers.py); one at a time on a GPU, under torchrun or a launcher.
EVAL_WORKERS ?= $(if $(or $(GPU),$(GPUS),$(NPROC),$(LAUNCH)),1,$(shell echo $$(( $(JOBS) / $(TEACHERS_AT_ONCE) > 0 ? $(JOBS) / $(TEACHERS_AT_ONCE) : 1 ))))

.PHONY: all venv data check-data teacher targets distill prune prune-oneshot prune-iterative evaluate quantize paper bench \
	timings results test test-slow lint lab clean clean-runs help

all: paper  ## the whole study: environment, data, every stage, tables and figures

# The paper rule folds the log after its own run; this refolds it after single stages.
timings: | $(STAMP)  ## fold the per-stage wall times into runs/<name>/timings.csv
	$(FOLD_TIMINGS)

# The reference run's tables, timings and resolved profile, kept in docs/results/<p>/.
# Its figures that the README shows go to docs/figures/<name>/.
RESULTS := docs/results/$(NAME)
RESULT_FIGURES_DIR := docs/figures/$(NAME)
RESULT_FILES := $(addprefix $(RUNS)/paper/,all_runs.csv effects.csv teacher_spread.csv validity.csv summary.md) $(RUNS)/timings.csv $(PROFILE_STAMP)
RESULT_FIGURES := $(addprefix $(RUNS)/paper/,forest.png replicates_gradcam_auc.png)
# drawn only where the evaluation scored faithfulness and a method has its baseline beside it
RESULT_OPTIONAL := $(addprefix $(RUNS)/paper/,forest_faithfulness.png faithfulness_curves.png)
results:  ## copy a finished study's tables and figures into docs/{results,figures}/<name>/
	@missing=0; for f in $(RESULT_FILES) $(RESULT_FIGURES); do \
		[ -f "$$f" ] || { echo "make results: $$f is missing" >&2; missing=1; }; \
	done; \
	[ $$missing = 0 ] || { echo "make results: run \`make all PROFILE=$(PROFILE)$(if $(SET), SET='$(SET)')\` first" >&2; exit 1; }
	@mkdir -p $(RESULTS) $(RESULT_FIGURES_DIR)
	cp $(RESULT_FILES) $(RESULTS)/
	cp $(RESULT_FIGURES) $(RESULT_FIGURES_DIR)/
	@for f in $(RESULT_OPTIONAL); do [ ! -f "$$f" ] || cp "$$f" $(RESULT_FIGURES_DIR)/; done

define HELP_VARIABLES
Variables (make VAR=value ...):
  PROFILE=smoke|default|replicated|voc|path/to/mine.yaml   the profile; built-ins
                         are attrlib/profiles/*.yaml, every field described in default.yaml
  SET="f=v ..."          change profile fields: SET="distill.epochs=10 seeds=[0]"; runs go
                         to runs/<profile>-<hash of SET> (NAME=... names the folder)
  VOC_ROOT=/path/to/VOCdevkit/VOC2012   real PASCAL VOC 2012 (with PROFILE=voc)
  TEACHER_WEIGHTS=/path/to/vgg16_bn.pth torchvision's ImageNet weights for the voc teacher
  TEACHER_SEEDS          the teachers (default: the profile's teacher_seeds)
  SEEDS, DISTILL_SEEDS, PRUNE_SEEDS, QUANTIZE_SEEDS  seeds of each teacher's grid
                         (default: the profile's)
  JOBS=n THREADS=n       grid runs at a time, torch threads each (default: cores, 1 each)
  FAITH_METRICS=deletion,insertion,road  faithfulness metrics of the evaluation (default:
                         every registered one but the opt-in road)
  EVAL_OVERWRITE=1       re-score models whose eval.json was made with other settings
  EVAL_WORKERS=n         models each evaluation scores at a time (default: JOBS per teacher
                         evaluating at once on a CPU, 1 on a GPU)
  GPUS="0 1" NPROC=n LAUNCH="srun ..."  scaling out: docs/scaling.md
  LAB_PORT, TB_PORT      ports of make lab and make tensorboard
endef
export HELP_VARIABLES
help:  ## this list
	@echo "Targets (runs/<name>/ holds a profile's runs; see README.md):"
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20
	@echo "$$HELP_VARIABLES"

venv: $(STAMP)  ## the environment: .venv with torch 2.14.1 (about 6 GB, 1-2 min)
$(STAMP): pyproject.toml
	@mkdir -p $(RUNS)
	$(call claim,$@,,venv) sh -c '$(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -e ".[test]" && touch $@'

data: $(DATA_STAMP)  ## the profile's synthetic data set (or check VOC_ROOT's split file)
$(SYNTH_ROOT)/VOCdevkit/VOC2012/synthvoc.json: | $(STAMP) $(PROFILE_STAMP)
	@mkdir -p $(RUNS)
	$(call claim,$@,,data,$(SYNTH_ROOT).lock) $(PY) -m attrlib.synthvoc --root $(SYNTH_ROOT) $(PROFILE_ARGS) --seed $(SEED)
ifneq ($(VOC_ROOT),)
$(VOC_ROOT)/ImageSets/Main/train.txt:
	$(error VOC_ROOT=$(VOC_ROOT) has no ImageSets/Main/train.txt; point VOC_ROOT at VOCdevkit/VOC2012)
endif

# Real data is read whole before the teacher trains on it: every missing or unreadable file
# listed at once, not the first one found hours into a run (the stamp gates the teacher).
DATA_CHECKED := $(RUNS)/.data-checked
CHECK_GATE := $(if $(VOC_ROOT),$(DATA_CHECKED))
check-data: $(DATA_STAMP) | $(STAMP)  ## read every image, annotation and mask once, list every problem
	$(PY) -m attrlib.datacheck check $(DATA_ROOT)
$(DATA_CHECKED): $(DATA_STAMP) | $(STAMP)
	$(PY) -m attrlib.datacheck check $(DATA_ROOT)
	@mkdir -p $(dir $@) && touch $@

# The data's identity for the stages: a digest of its files' content, rewritten only when the
# content changes (make re-reads its time after the recipe), so data regenerated byte for
# byte reruns nothing. The synthetic stamp, ours, is set back to the digest's time then; a
# real tree's is left alone (its files are the user's).
DATA_DIGEST := $(RUNS)/.data-digest
$(DATA_DIGEST): $(DATA_STAMP) | $(STAMP)
	@mkdir -p $(dir $@)
	$(call claim,$@) $(PY) -m attrlib.datacheck digest $(DATA_ROOT) --into $@ $(if $(VOC_ROOT),,--rewind $(DATA_STAMP))

teacher: $(TEACHER_NBS)  ## train the teachers (notebook 01), one per teacher seed
targets: $(ALL_TARGETS)  ## every teacher's logits and maps for every training view
distill: $(DISTILL_NBS)  ## every distillation run of the grid (notebook 02)
prune: prune-oneshot prune-iterative  ## both pruning stages
prune-oneshot: $(ONESHOT_NBS)  ## every one-shot structured pruning run (notebook 03)
prune-iterative: $(ITERATIVE_NBS)  ## every iterative unstructured pruning schedule (notebook 04)
quantize: $(QUANTIZE_NBS)  ## every quantization-aware fine-tuning run (notebook 04b)
evaluate: $(EVAL_NBS)  ## accuracy and localization of every model (notebook 05)

# Every finished model of a teacher's folder: the teacher, students, pruned networks,
# iterations (on the default-sized profiles every second iteration: 16 x 6 schedules would
# double the time of the evaluation, and the curves read as well from 8 points).
SKIP_ITERATIONS := $(if $(filter default replicated resnet,$(PROFILE_NAME)),-not -path '*/iter_0[13579]/*' -not -path '*/iter_1[13579]/*')

# The rules of teacher seed $(1) and its folder $(2). Its targets are the teacher's logits and
# matching maps for every training view, computed once and read by every distillation and
# pruning run instead of running the teacher in each of their steps.
define TEACHER_RULES
$(2)/teacher/01_teacher.ipynb: notebooks/01_teacher.ipynb $$(DATA_DIGEST) $$(RECIPE_STAMP) | $$(STAMP) $$(CHECK_GATE)
	$$(call run_notebook,$$<,$$@,$$(COMMON) -p seed $(1) -p out_dir $(2)/teacher -p weights '$$(TEACHER_WEIGHTS)',$$(TEACHER_ENV))

$(2)/teacher/targets.pt: $(2)/teacher/01_teacher.ipynb
	@mkdir -p $$(RUNS)
	$$(TEACHER_ENV) $$(call claim,$$@,,targets) $$(call run_prefix,targets) $$(PY) -m attrlib.stages targets --teacher $(2)/teacher/best.pt --data-root $$(DATA_ROOT) $$(PROFILE_ARGS) --out $$@

$(2)/evaluate/05_evaluate.ipynb: notebooks/05_evaluate.ipynb $(2)/teacher/01_teacher.ipynb $(call distill_nbs,$(1)) $(call oneshot_nbs,$(1)) $(call iterative_nbs,$(1)) $(call quantize_nbs,$(1))
	$$(call run_notebook,$$<,$$@,$$(COMMON) -p teacher $(2)/teacher/best.pt -p out_dir $$(dir $$@) -p workers $$(EVAL_WORKERS) $$(FAITH_PARAMS) -y "checkpoints: [$$$$(find $(2) -name best.pt -not -path '*/evaluate/*' $$(SKIP_ITERATIONS) | sort | paste -sd, -)]",$$(TEACHER_ENV))
endef
$(foreach t,$(TEACHER_SEEDS),$(eval $(call TEACHER_RULES,$(t),$(call tree,$(t)))))

# One rule per compression run: (teacher seed, notebook path, parameters, grid prefix).
define RUN_RULE
$(2): notebooks/$($(4)_notebook).ipynb $(call tree,$(1))/teacher/targets.pt $$(RECIPE_STAMP)
	$$(call run_notebook,$$<,$$@,$$(COMMON) -p $($(4)_start) $(call tree,$(1))/teacher/best.pt -p teacher_targets $(call tree,$(1))/teacher/targets.pt -p out_dir $$(dir $$@) $(3),$$(GRID_ENV))
endef
$(foreach t,$(TEACHER_SEEDS),$(foreach s,$(DISTILL_SEEDS),$(foreach w,$(DISTILL_WIDTHS),$(foreach m,$(DISTILL_METHODS),$(eval $(call RUN_RULE,$(t),$(call distill_nb,$(t),$(w),$(m),$(s)),$(call distill_params,$(w),$(m),$(s)),distill))))))
$(foreach t,$(TEACHER_SEEDS),$(foreach s,$(PRUNE_SEEDS),$(foreach r,$(PRUNE_RATES),$(foreach m,$(ONESHOT_METHODS),$(eval $(call RUN_RULE,$(t),$(call oneshot_nb,$(t),$(r),$(m),$(s)),$(call oneshot_params,$(r),$(m),$(s)),oneshot))))))
$(foreach t,$(TEACHER_SEEDS),$(foreach s,$(PRUNE_SEEDS),$(foreach m,$(ITERATIVE_METHODS),$(eval $(call RUN_RULE,$(t),$(call iterative_nb,$(t),$(m),$(s)),$(call iterative_params,$(m),$(s)),iterative)))))
$(foreach t,$(TEACHER_SEEDS),$(foreach s,$(QUANTIZE_SEEDS),$(foreach b,$(QUANTIZE_BITS),$(foreach m,$(QUANTIZE_METHODS),$(eval $(call RUN_RULE,$(t),$(call quantize_nb,$(t),$(b),$(m),$(s)),$(call quantize_params,$(b),$(m),$(s)),quantize))))))

paper: $(PAPER_NB)  ## the paper's tables and figures (notebook 06)
$(PAPER_NB): notebooks/06_paper.ipynb $(EVAL_NBS)
	$(call run_notebook,$<,$@,$(PROFILE_PARAMS) -p runs_dir $(RUNS) -p out_dir $(dir $@))
	$(FOLD_TIMINGS)

# Speed against the authors' constructions, same process; ratios in runs/bench/*.json; the
# int8 network against the float teacher (size, latency, mAP)
bench: $(STAMP)  ## speed against the authors' constructions (ratios, runs/bench/)
	$(PY) benchmarks/distill_step.py --profile $(PROFILE_NAME)
	$(PY) benchmarks/evaluate.py --data-root $(DATA_ROOT) --checkpoint $(TEACHER_CKPT)
	$(PY) benchmarks/distill_throughput.py --profile $(PROFILE_NAME) --data-root $(DATA_ROOT)
	$(PY) benchmarks/quantize.py --profile $(PROFILE_NAME) --data-root $(DATA_ROOT) --checkpoint $(TEACHER_CKPT)

# On a CUDA device: teacher AMP vs fp32, distill step and evaluation ratios (runs/bench/gpu.json)
.PHONY: bench-gpu
bench-gpu: $(STAMP)  ## GPU timings (AMP, distillation, evaluation); says so without CUDA
	$(PY) benchmarks/gpu.py

test: $(STAMP)  ## the fast test suite (a few minutes)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)  ## the end-to-end tests on the smoke profile (CI runs both)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)  ## ruff check and format check
	$(PY) -m ruff check attrlib tests benchmarks notebooks
	$(PY) -m ruff format --check attrlib tests benchmarks

# JupyterLab only when asked for: the batch run needs papermill and a kernel, not the editor.
# lab-install brings it (and the browser test's drivers) without starting a server; the slow
# suite needs it for tests/test_lab.py. LAB_PORT=n picks the port (default: JupyterLab's);
# JupyterLab refuses root without --allow-root, and CI and these machines run as root.
LAB_PORT ?=
.PHONY: lab-install
lab: $(VENV)/.installed-lab  ## open the notebooks in JupyterLab (installs it on first use)
	$(VENV)/bin/jupyter lab notebooks $(if $(LAB_PORT),--port $(LAB_PORT)) $(if $(filter 0,$(shell id -u)),--allow-root)
lab-install: $(VENV)/.installed-lab  ## install JupyterLab and the browser-test drivers only
test-slow: $(VENV)/.installed-lab
$(VENV)/.installed-lab: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lab]'
	@touch $@

# Live curves of every training stage (each run's tb/ folder), on localhost:TB_PORT.
TB_PORT ?= 6006
.PHONY: tensorboard
tensorboard: $(STAMP)  ## live training curves of runs/<name>/ on localhost:6006 (TB_PORT)
	$(VENV)/bin/tensorboard --logdir $(RUNS) --host localhost --port $(TB_PORT)

# Removes caches and generated data; finished runs stay (see clean-runs).
clean:  ## remove caches and generated data (runs stay)
	rm -rf data/synthvoc-* .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs:  ## delete runs/<name>/ after asking
	@echo "This deletes every result under $(RUNS)."; \
	read -p "Type the profile name to confirm: " answer; \
	[ "$$answer" = "$(NAME)" ] && rm -rf $(RUNS) || echo "not deleted"
