# recipes/common.mk — settings and file rules shared by the table recipes (docs/design.md §6).
#
#   make lebm-table1 [SCALE=smoke|cpu|paper] [RUNS=runs] [RESULTS=results] [DATA_ROOT=data] [DEVICE=auto]
#   make -j2 tables SCALE=smoke       every table of the papers;  make cpu-anomaly   the MNIST anomaly benchmark
#
# Cost of the whole smoke set (94 CLI calls, ~2.4 s of torch import each): about 420 s of CPU, so about 7 min on
# one core and under 4 min with -j2 on two idle cores. cpu scale: hours per table; paper scale: GPU days.
#
# Every stage is one `ebmtool ... --json` call. Its artifact is a file target under $(RUNS)/$(SCALE)/ and
# `recipes/table.py run` keeps the call's JSON (plus its command, input files and wall time) beside it as
# ARTIFACT.json, or as the target itself for evaluations (*.fid.json, *.recon.json, *.anomaly.json, ...).
# recipes/table.py renders $(RESULTS)/<table>.md from those JSON files; make re-runs only what is missing or older
# than its inputs. Layout of $(RUNS)/$(SCALE)/:
#   data/<id>-train.safetensors, data/<id>-test.safetensors     dataset artifacts (+ .json)
#   <id>/pretrain.safetensors                                   generator under N(0, I): 0-stage model, warm start
#   <id>/{mle,ance1,ance2,ance4,ance8,tre1..tre8,joint-mle,bidvl-r<r'>}.safetensors
#   <id>/<model>.samples.safetensors, <model>.fid.json, <model>.recon.json, <model>.ood-<set>.json
#   <id>/features.safetensors                                   FID feature space (smoke, cpu)
#   anomaly/d<K>-s<seed>/<method>.safetensors, <method>.anomaly.json
# At SCALE=smoke <id> is a stand-in built from data available offline (digits32 for SVHN and CIFAR-10, digits64
# for CelebA); at cpu and paper it is the dataset itself, read from $(DATA_ROOT)/<dataset>.

ifndef EBM_RECIPES_COMMON
EBM_RECIPES_COMMON := 1

SCALE        ?= smoke
RUNS         ?= runs
RESULTS      ?= results
DATA_ROOT    ?= data
DEVICE       ?= auto
# MNIST's IDX files: MNIST_ROOT=DIR overrides this default (fill DIR with `ebmtool data prepare --dataset mnist
# --root DIR --download -o /tmp/m.safetensors` on a machine with internet)
ifeq ($(origin MNIST_TEST_ROOT),undefined)
MNIST_TEST_ROOT := $(or $(MNIST_ROOT),../shared/data/mnist)
endif
INCEPTION    ?=

ifeq ($(filter $(SCALE),smoke cpu paper),)
$(error SCALE=$(SCALE): choose smoke, cpu or paper)
endif

# Recipe prerequisites are order-only on the installed CLI (set up by the top-level $(STAMP) rule if missing),
# so reinstalling the package does not re-run finished stages. Delete $(RUNS)/$(SCALE) to start afresh.
ifeq ($(wildcard $(EBM)),)
$(EBM):
	$(MAKE) --no-print-directory $(STAMP)
endif

.SECONDEXPANSION:
.SECONDARY:

R     := $(RUNS)/$(SCALE)
TABLE := PYTHONDONTWRITEBYTECODE=1 $(PY) recipes/table.py
RUN   := $(TABLE) run
TRAIN := --preset $(SCALE) --device $(DEVICE) --json --quiet --force

# ---------------------------------------------------------------------------------------- per-scale knobs
# LIMIT: training images per dataset (empty = all; LIMIT64 for the 64x64 stand-in), TEST_LIMIT: test images, NSAMPLES: samples per FID,
# NRECON: test images reconstructed, FEAT_EPOCHS: most feature-classifier epochs (early stopping), FID: features | inception,
# ANO_DIGITS / ANO_SEEDS: the hold-one-digit runs of the anomaly tables. FID needs more images than feature dimensions
# (train-features: 128), so smoke keeps 160 samples and 160 images of the 64x64 stand-in.
LIMIT_smoke       := 300
LIMIT64_smoke     := 160
LIMIT_cpu         := 5000
LIMIT_paper       :=
TEST_LIMIT_smoke  := 300
TEST_LIMIT_cpu    := 1000
TEST_LIMIT_paper  := 10000
NSAMPLES_smoke    := 160
NSAMPLES_cpu      := 2000
NSAMPLES_paper    := 50000
NRECON_smoke      := 100
NRECON_cpu        := 1000
NRECON_paper      := 10000
FEAT_EPOCHS_smoke := 1
FEAT_EPOCHS_cpu   := 30
FEAT_EPOCHS_paper := 30
FID_smoke         := features
FID_cpu           := features
FID_paper         := inception
ANO_DIGITS_smoke  := 1
ANO_DIGITS_cpu    := 1 4 5 7 9
ANO_DIGITS_paper  := 1 4 5 7 9
ANO_SEEDS_smoke   := 0
ANO_SEEDS_cpu     := 0 1 2
ANO_SEEDS_paper   := 0 1 2

LIMIT       ?= $(LIMIT_$(SCALE))
LIMIT64     ?= $(or $(LIMIT64_$(SCALE)),$(LIMIT))
TEST_LIMIT  ?= $(TEST_LIMIT_$(SCALE))
NSAMPLES    ?= $(NSAMPLES_$(SCALE))
NRECON      ?= $(NRECON_$(SCALE))
FEAT_EPOCHS ?= $(FEAT_EPOCHS_$(SCALE))
FID         ?= $(FID_$(SCALE))
ANO_DIGITS  ?= $(ANO_DIGITS_$(SCALE))
ANO_SEEDS   ?= $(ANO_SEEDS_$(SCALE))

lim = $(if $(1),--limit $(1))

# ---------------------------------------------------------------------------------------- datasets
# logical dataset (a column of a paper's table) -> data id (a folder under $(R) and data/<id>-*.safetensors)
HAVE_shared_mnist := $(wildcard $(MNIST_TEST_ROOT)/t10k-images-idx3-ubyte*)
DID_svhn_smoke       := digits32
DID_cifar10_smoke    := digits32
DID_celeba_smoke     := digits64
DID_ood-svhn_smoke   := $(if $(HAVE_shared_mnist),ood-mnist32,ood-synthtrain32)
DID_ood-celeba_smoke := ood-synth32
did = $(or $(DID_$(1)_$(SCALE)),$(1))

train_of = $(R)/data/$(1)-train.safetensors
test_of  = $(R)/data/$(or $(TESTOF_$(1)),$(1)-test).safetensors
# scikit-learn's digits have no test split: at smoke scale the "test" images are the training images (stated
# in the tables); every real dataset has its own test split.
TESTOF_digits32 := digits32-train
TESTOF_digits64 := digits64-train

# `ebmtool data prepare` flags per data file stem
PREP_digits32-train        := --dataset digits --size 32 $(call lim,$(LIMIT))
PREP_digits64-train        := --dataset digits --size 64 $(call lim,$(LIMIT64))
PREP_ood-mnist32-test      := --dataset mnist --root $(MNIST_TEST_ROOT) --split test --size 32 $(call lim,$(TEST_LIMIT))
PREP_ood-synthtrain32-test := --dataset synthetic --split train --size 32 $(call lim,$(TEST_LIMIT))
PREP_ood-synth32-test      := --dataset synthetic --split test --size 32 $(call lim,$(TEST_LIMIT))
PREP_svhn-train            := --dataset svhn --root $(DATA_ROOT)/svhn --split train $(call lim,$(LIMIT))
PREP_svhn-test             := --dataset svhn --root $(DATA_ROOT)/svhn --split test $(call lim,$(TEST_LIMIT))
PREP_cifar10-train         := --dataset cifar10 --root $(DATA_ROOT)/cifar10 --split train $(call lim,$(LIMIT))
PREP_cifar10-test          := --dataset cifar10 --root $(DATA_ROOT)/cifar10 --split test $(call lim,$(TEST_LIMIT))
# CelebA: 40,000 training images at paper scale, as in the papers (Nijkamp et al.'s protocol)
PREP_celeba-train          := --dataset celeba --root $(DATA_ROOT)/celeba --split train --size 64 $(call lim,$(or $(LIMIT),40000))
PREP_celeba-test           := --dataset celeba --root $(DATA_ROOT)/celeba --split test --size 64 $(call lim,$(TEST_LIMIT))
# BiDVL Table 4's OOD sets, at the 32x32 of the CIFAR-10 model
PREP_ood-svhn-test         := --dataset svhn --root $(DATA_ROOT)/svhn --split test $(call lim,$(TEST_LIMIT))
PREP_ood-celeba-test       := --dataset celeba --root $(DATA_ROOT)/celeba --split test --size 32 $(call lim,$(TEST_LIMIT))
# CelebA has no class labels to train a feature classifier on: in the features FID space its classifier is
# trained on CIFAR-10 resized to 64x64 (said in the tables); at paper scale FID uses Inception.
PREP_cifar10-64-train      := --dataset cifar10 --root $(DATA_ROOT)/cifar10 --split train --size 64 $(call lim,$(or $(LIMIT),10000))
FEATOF_celeba              := cifar10-64-train

# MNIST hold-one-digit protocol. smoke/cpu: the 10,000-image MNIST test set under MNIST_TEST_ROOT (set MNIST_ROOT=DIR, a
# folder that `ebmtool data prepare --dataset mnist --root DIR --download` filled; docs/design.md §5); smoke falls back
# to scikit-learn's digits when it is absent. paper: the 60,000-image training split from $(DATA_ROOT)/mnist.
MNIST_ROOT  ?= $(if $(filter paper,$(SCALE)),$(DATA_ROOT)/mnist,$(MNIST_TEST_ROOT))
MNIST_SPLIT ?= $(if $(filter paper,$(SCALE)),train,test)
MNIST_FILE_train := train-images-idx3-ubyte
MNIST_FILE_test  := t10k-images-idx3-ubyte
HAVE_mnist = $(wildcard $(MNIST_ROOT)/$(MNIST_FILE_$(MNIST_SPLIT))* $(MNIST_ROOT)/MNIST/raw/$(MNIST_FILE_$(MNIST_SPLIT))*)
ANO_DS := $(if $(and $(filter smoke,$(SCALE)),$(if $(HAVE_mnist),,1)),digits,mnist)
ANO_LIMIT_train_smoke := 250
ANO_LIMIT_test_smoke  := 250
ano_prep = --dataset $(ANO_DS) $(if $(filter mnist,$(ANO_DS)),--root $(MNIST_ROOT) --split $(MNIST_SPLIT)) --size 32 \
	--anomaly-protocol $(1) --part $(2) $(call lim,$(ANO_LIMIT_$(2)_$(SCALE)))
# stem "mnist-ano1-train" -> flags
is_ano    = $(findstring -ano,$(1))
prep_of   = $(if $(call is_ano,$(1)),$(call ano_prep,$(patsubst ano%,%,$(word 2,$(subst -, ,$(1)))),$(lastword $(subst -, ,$(1)))),$(PREP_$(1)))
stem_id   = $(patsubst %-train,%,$(patsubst %-test,%,$(1)))

# ---------------------------------------------------------------------------------------- missing data
# At SCALE=cpu|paper a table stops before any work, with one line naming the missing dataset and how to get it
# (make's `$(error)`: exit status 2).
HAVE_svhn      = $(and $(wildcard $(DATA_ROOT)/svhn/train_32x32.mat),$(wildcard $(DATA_ROOT)/svhn/test_32x32.mat))
HAVE_cifar10   = $(wildcard $(DATA_ROOT)/cifar10/cifar-10-batches-py/test_batch)
HAVE_celeba    = $(wildcard $(DATA_ROOT)/celeba/celeba/img_align_celeba)
TORCH_HUB     := $(or $(TORCH_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/torch)/hub
INCEPTION_FILE = $(or $(INCEPTION),$(TORCH_HUB)/checkpoints/pt_inception-2015-12-05-6726825d.pth)
HAVE_inception = $(wildcard $(INCEPTION_FILE))
GET = on a machine with internet run `$(EBM) data prepare --dataset $(1) --root DIR --download$(2) -o /tmp/$(1).safetensors`$(3), then copy DIR here as $(DATA_ROOT)/$(1) (or pass DATA_ROOT=...)
MISSING_svhn      = SVHN is missing: $(DATA_ROOT)/svhn needs train_32x32.mat and test_32x32.mat; $(call GET,svhn, --split train, and again with --split test)
MISSING_cifar10   = CIFAR-10 is missing: $(DATA_ROOT)/cifar10 needs cifar-10-batches-py/; $(call GET,cifar10, --split train)
MISSING_celeba    = CelebA is missing: $(DATA_ROOT)/celeba needs celeba/img_align_celeba and its list files; $(call GET,celeba, --split train, or fetch img_align_celeba.zip and the list_*.txt files by hand)
MISSING_mnist     = MNIST ($(MNIST_SPLIT) split) is missing under $(MNIST_ROOT): on a machine with internet run `$(EBM) data prepare --dataset mnist --root DIR --split $(MNIST_SPLIT) --download -o /tmp/mnist.safetensors`, then pass MNIST_ROOT=DIR
MISSING_inception = FID Inception weights are missing: put pt_inception-2015-12-05-6726825d.pth (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth) at $(INCEPTION_FILE) or pass INCEPTION=PATH (or FID=features)
need = $(if $(filter smoke,$(SCALE)),,$(foreach d,$(1),$(if $(HAVE_$(d)),,$(if $(DOWNLOAD),$(call fetch,$(d)),$(error $(MISSING_$(d)))))))
# DOWNLOAD=1: fetch what is missing first (`data prepare --download` into $(DATA_ROOT)/<dataset>, pytorch-fid's
# Inception weights into the torch hub cache), once per make; a failed fetch (no network) stops with one line.
# FETCH / FETCH_INCEPTION are the downloaders (a test replaces them with fakes).
DOWNLOAD        ?=
FETCH           ?= $(PY) -m ebmtool data prepare
FETCH_INCEPTION ?= $(PY) -c 'from pytorch_fid.inception import fid_inception_v3; fid_inception_v3()'
FETCH_OUT       := $(or $(TMPDIR),/tmp)/ebmtool-fetch-$(shell echo $$PPID)
FETCHARGS_svhn      = --dataset svhn --root $(DATA_ROOT)/svhn --split train;--dataset svhn --root $(DATA_ROOT)/svhn --split test
FETCHARGS_cifar10   = --dataset cifar10 --root $(DATA_ROOT)/cifar10 --split train
FETCHARGS_celeba    = --dataset celeba --root $(DATA_ROOT)/celeba --split train --size 64
FETCHARGS_mnist     = --dataset mnist --root $(MNIST_ROOT) --split $(MNIST_SPLIT)
FETCHCMD_inception  = $(FETCH_INCEPTION) $(INCEPTION_FILE)
FETCHCMD_dataset    = mkdir -p $(FETCH_OUT) && $(foreach a,$(subst ;, ,$(subst $(space),+,$(FETCHARGS_$(1)))),$(FETCH) $(subst +, ,$(a)) --download --limit 1 -o $(FETCH_OUT)/$(1).safetensors --force >/dev/null &&) rm -rf $(FETCH_OUT)
fetch_cmd = $(or $(FETCHCMD_$(1)),$(call FETCHCMD_dataset,$(1)))
FETCHED :=
fetch = $(if $(filter $(1),$(FETCHED)),,$(eval FETCHED += $(1))$(info fetching $(1) (DOWNLOAD=1): $(call fetch_cmd,$(1)))$(if \
	$(filter ok,$(shell ( $(call fetch_cmd,$(1)) ) </dev/null >/dev/null 2>&1 && echo ok)),,$(error $(1): DOWNLOAD=1 could not fetch it \
	(no network?); `$(call fetch_cmd,$(1))` failed: run it to see why, or get it by hand: $(MISSING_$(1)))))
empty :=
space := $(empty) $(empty)
# datasets a data file stem needs
NEEDDS_svhn := svhn
NEEDDS_ood-svhn := svhn
NEEDDS_cifar10 := cifar10
NEEDDS_cifar10-64 := cifar10
NEEDDS_celeba := celeba
NEEDDS_ood-celeba := celeba
stem_needs = $(if $(call is_ano,$(1)),$(if $(filter mnist,$(ANO_DS)),mnist),$(NEEDDS_$(call stem_id,$(1))))
# What each table target needs; the goals on the command line are checked here, before any work (the data
# rules check their own dataset again, for a results file or artifact named directly).
FID_NEEDS    = $(if $(filter inception,$(FID)),inception)
CELEBA_NEEDS = celeba $(if $(filter features,$(FID)),cifar10)
GEN_NEEDS    = svhn cifar10 $(CELEBA_NEEDS) $(FID_NEEDS)
NEEDS_lebm-table1  = $(GEN_NEEDS)
NEEDS_ance-table1  = $(GEN_NEEDS)
NEEDS_joint-table1 = $(GEN_NEEDS)
NEEDS_ance-table3  = $(CELEBA_NEEDS) $(FID_NEEDS)
NEEDS_bidvl-table1 = cifar10 $(CELEBA_NEEDS) $(FID_NEEDS)
NEEDS_bidvl-table3 = cifar10 celeba
NEEDS_bidvl-table4 = cifar10 svhn celeba
NEEDS_bidvl-table5 = cifar10 $(FID_NEEDS)
NEEDS_lebm-table4 = mnist
NEEDS_ance-table2 = mnist
NEEDS_joint-table4 = mnist
NEEDS_anomaly-table = mnist
NEEDS_tables = $(GEN_NEEDS) mnist
$(call need,$(foreach g,$(MAKECMDGOALS),$(NEEDS_$(g))))

# ---------------------------------------------------------------------------------------- data rules
$(R)/data/%-noise.safetensors: $$(call test_of,$$*) | $(EBM)
	@mkdir -p $(@D)
	$(RUN) $@.json -- $(PY) recipes/table.py noise --like $< --seed 0 -o $@

$(R)/data/%.safetensors: | $(EBM)
	@mkdir -p $(@D)$(call need,$(call stem_needs,$*))$(if $(call prep_of,$*),,$(error no data recipe for $@))
	$(RUN) $@.json -- $(EBM) data prepare $(call prep_of,$*) -o $@ --json --force

# ---------------------------------------------------------------------------------------- training rules
# Paper-scale settings the presets leave to the dataset (LEBM Table 5-6, adaptive-NCE Sec. A, docs/design.md §3-4):
# the CIFAR-10 generator (nz 128, ngf 128, 8x8 first layer), 40 posterior steps and 200/50 epochs per stage on it.
ifeq ($(SCALE),paper)
GENFLAGS_cifar10 := --arch cifar32 --nz 128 --set generator.ngf=128 --set posterior.steps=40
FIT_mle_cifar10  := --set posterior.steps=40
FIT_ance_cifar10 := --set posterior.steps=40 --epochs-per-stage 50
FIT_joint_cifar10 := --set posterior.steps=40
endif

$(R)/%/pretrain.safetensors: $(R)/data/%-train.safetensors | $(EBM)
	@mkdir -p $(@D)
	$(RUN) $@.json -- $(EBM) pretrain-generator --data $< $(TRAIN) $(GENFLAGS_$*) -o $@

$(R)/%/mle.safetensors: $(R)/%/pretrain.safetensors $(R)/data/%-train.safetensors
	$(RUN) $@.json -- $(EBM) fit-prior --method mle --init $< --data $(word 2,$^) $(TRAIN) $(FIT_mle_$*) -o $@

$(R)/%/joint-mle.safetensors: $(R)/%/pretrain.safetensors $(R)/data/%-train.safetensors
	$(RUN) $@.json -- $(EBM) fit-prior --method joint-mle --init $< --data $(word 2,$^) $(TRAIN) $(FIT_joint_$*) -o $@

# adaptive NCE, stage by stage through files: ance1 <- pretrain (+1), ance2 <- ance1 (+1), ance4 <- ance2 (+2),
# ance8 <- ance4 (+4); the memory of posterior samples travels in the artifact.
define ANCE_STAGE_RULE
$$(R)/%/ance$(1).safetensors: $$(R)/%/$(2).safetensors $$(R)/data/%-train.safetensors
	$$(RUN) $$@.json -- $$(EBM) fit-prior --method adaptive-nce --stages $(3) --init $$< --data $$(word 2,$$^) $$(TRAIN) $$(FIT_ance_$$*) -o $$@
endef
$(eval $(call ANCE_STAGE_RULE,1,pretrain,1))
$(eval $(call ANCE_STAGE_RULE,2,ance1,1))
$(eval $(call ANCE_STAGE_RULE,4,ance2,2))
$(eval $(call ANCE_STAGE_RULE,8,ance4,4))

# the non-adaptive (TRE-style) ablation: m ratios at once on the fixed 0-stage model
define TRE_RULE
$$(R)/%/tre$(1).safetensors: $$(R)/%/pretrain.safetensors $$(R)/data/%-train.safetensors
	$$(RUN) $$@.json -- $$(EBM) fit-prior --method adaptive-nce --non-adaptive --stages $(1) --init $$< --data $$(word 2,$$^) $$(TRAIN) $$(FIT_ance_$$*) -o $$@
endef
$(foreach m,1 2 4 8,$(eval $(call TRE_RULE,$(m))))

# BiDVL, one model per basic ratio r' (one epoch at smoke scale: its image-space nets are the costliest)
BIDVL_RATIOS := 0.01 0.05 0.1 0.5 1.0
BIDVL_FLAGS_smoke := --epochs 1
define BIDVL_RULE
$$(R)/%/bidvl-r$(1).safetensors: $$(R)/data/%-train.safetensors | $$(EBM)
	@mkdir -p $$(@D)
	$$(RUN) $$@.json -- $$(EBM) fit-prior --method bidvl --basic-ratio $(1) --data $$< $$(TRAIN) $$(BIDVL_FLAGS_$$(SCALE)) -o $$@
endef
$(foreach r,$(BIDVL_RATIOS),$(eval $(call BIDVL_RULE,$(r))))

# ---------------------------------------------------------------------------------------- evaluation rules
id_of      = $(firstword $(subst /, ,$(1)))
feat_of    = $(R)/$(1)/features.safetensors
fid_deps   = $(call train_of,$(1)) $(if $(filter features,$(FID)),$(call feat_of,$(1)))
fid_space  = $(if $(filter features,$(FID)),--features $(call feat_of,$(1)),$(if $(INCEPTION),--inception-weights $(INCEPTION)))

$(R)/%/features.safetensors: $(R)/data/$$(or $$(FEATOF_$$*),$$*-train).safetensors | $(EBM)
	@mkdir -p $(@D)
	$(RUN) $@.json -- $(EBM) train-features --data $< --epochs $(FEAT_EPOCHS) --seed 0 --device $(DEVICE) --quiet --json --force -o $@

$(R)/%.samples.safetensors: $(R)/%.safetensors
	$(RUN) $@.json -- $(EBM) sample --model $< -n $(NSAMPLES) --seed 0 --device $(DEVICE) --json --force -o $@

$(R)/%.fid.json: $(R)/%.samples.safetensors $$(call fid_deps,$$(call id_of,$$*))
	$(RUN) $@ -- $(EBM) fid --samples $< --ref $(call train_of,$(call id_of,$*)) $(call fid_space,$(call id_of,$*)) \
		--cache-dir $(R)/fid-cache --device $(DEVICE) --quiet --json

$(R)/%.recon.json: $(R)/%.safetensors $$(call test_of,$$(call id_of,$$*))
	$(RUN) $@ -- $(EBM) reconstruct --model $< --data $(word 2,$^) --limit $(NRECON) --seed 0 --device $(DEVICE) --json

# OOD detection (BiDVL Table 4): in-distribution = the model's test images (label 0), OOD = label 1
ood_file_random = $(R)/data/$(1)-noise.safetensors
ood_file_svhn   = $(call test_of,$(call did,ood-svhn))
ood_file_celeba = $(call test_of,$(call did,ood-celeba))
define OOD_RULE
$$(R)/%.ood-$(1).json: $$(R)/%.safetensors $$$$(call test_of,$$$$(call id_of,$$$$*)) $$$$(call ood_file_$(1),$$$$(call id_of,$$$$*))
	$$(RUN) $$@ -- $$(EBM) anomaly --model $$< --data $$(word 2,$$^) --ood-data $$(word 3,$$^) --seed 0 --device $$(DEVICE) --json
endef
$(foreach o,random svhn celeba,$(eval $(call OOD_RULE,$(o))))

# ---------------------------------------------------------------------------------------- anomaly rules
# $(R)/anomaly/d<K>-s<S>/: held-out digit K, seed S (training, posterior chains and PCA all seeded with S).
# Budgets: the preset of the scale; at cpu scale the budget of benchmarks/anomaly.py --protocol v2 (plus joint-mle).
ANO_FLAGS_pretrain_cpu     := --epochs 10 --set generator.ngf=16
ANO_FLAGS_mle_cpu          := --epochs 5
ANO_FLAGS_adaptive-nce_cpu := --stages 4 --epochs-per-stage 2
ANO_FLAGS_joint-mle_cpu    := --epochs 5
ANO_FLAGS_adaptive-nce_smoke := --stages 4
ANO_FLAGS_adaptive-nce_paper := --stages 4
ANO_METHODS := mle adaptive-nce joint-mle
ak = $(patsubst d%,%,$(word 1,$(subst -, ,$(1))))
as = $(patsubst s%,%,$(word 2,$(subst -, ,$(1))))
ano_data = $(R)/data/$(ANO_DS)-ano$(call ak,$(1))-$(2).safetensors

$(R)/anomaly/%/pretrain.safetensors: $$(call ano_data,$$*,train) | $(EBM)
	@mkdir -p $(@D)
	$(RUN) $@.json -- $(EBM) pretrain-generator --data $< $(TRAIN) --seed $(call as,$*) $(ANO_FLAGS_pretrain_$(SCALE)) -o $@

define ANO_FIT_RULE
$$(R)/anomaly/%/$(1).safetensors: $$(R)/anomaly/%/pretrain.safetensors $$$$(call ano_data,$$$$*,train)
	$$(RUN) $$@.json -- $$(EBM) fit-prior --method $(1) --init $$< --data $$(word 2,$$^) $$(TRAIN) --seed $$(call as,$$*) $$(ANO_FLAGS_$(1)_$$(SCALE)) -o $$@
endef
$(foreach m,$(ANO_METHODS),$(eval $(call ANO_FIT_RULE,$(m))))

$(R)/anomaly/%/pca.anomaly.json: $$(call ano_data,$$*,train) $$(call ano_data,$$*,test) | $(EBM)
	@mkdir -p $(@D)
	$(RUN) $@ -- $(PY) recipes/table.py pca --train $< --test $(word 2,$^) --anomaly-class $(call ak,$*) --seed $(call as,$*)

$(R)/anomaly/%.anomaly.json: $(R)/anomaly/%.safetensors $$(call ano_data,$$(call id_of,$$*),test)
	$(RUN) $@ -- $(EBM) anomaly --model $< --data $(word 2,$^) --anomaly-class $(call ak,$(call id_of,$*)) \
		--seed $(call as,$(call id_of,$*)) --device $(DEVICE) --json

# $(call ano_inputs,methods): every anomaly result of the scale's digits and seeds
ano_inputs = $(foreach k,$(ANO_DIGITS),$(foreach s,$(ANO_SEEDS),$(foreach m,$(1),$(R)/anomaly/d$(k)-s$(s)/$(m).anomaly.json)))

# ---------------------------------------------------------------------------------------- tables
# $(call render,TABLE,logical datasets): recipes/table.py reads the JSON files under $(R) (and their lineage)
RENDER_DEPS := recipes/table.py recipes/papers.py
COLS = $(foreach ds,$(1),--col $(ds)=$(call did,$(ds)))
render = @mkdir -p $(@D) && $(TABLE) render $(1) --scale $(SCALE) --runs $(R) $(call COLS,$(2)) \
	--digits $(ANO_DIGITS) --seeds $(ANO_SEEDS) --target $(or $(3),$(1)) -o $@ -- $(filter-out $(RENDER_DEPS),$^) >/dev/null \
	&& echo "wrote $@"
# the files a generation table reads for MODELS x METRICS on logical DATASETS
gen_inputs = $(foreach ds,$(1),$(foreach m,$(2),$(foreach e,$(3),$(R)/$(call did,$(ds))/$(m).$(e).json)))

TABLES :=
.PHONY: tables cpu-anomaly anomaly-table
tables: $(RESULTS)/$(SCALE)-anomaly.md
	@echo "$(SCALE) tables in $(RESULTS)/: $(notdir $(filter %.md,$^))"

anomaly-table: $(RESULTS)/$(SCALE)-anomaly.md
$(RESULTS)/$(SCALE)-anomaly.md: $(call ano_inputs,pca pretrain $(ANO_METHODS)) $(RENDER_DEPS)
	$(call render,anomaly,,$(if $(filter cpu,$(SCALE)),cpu-anomaly,anomaly-table))

cpu-anomaly:
	$(MAKE) --no-print-directory anomaly-table SCALE=cpu

endif
