# recipes/adaptive-nce.mk — adaptive multi-stage density ratio estimation, Xiao & Han,
# arXiv:2209.08739
#   make ance-table1 SCALE=...   Table 1: test MSE and sample FID on SVHN, CelebA-64, CIFAR-10 (with LEBM beside it)
#   make ance-table2 SCALE=...   Table 2: MNIST hold-one-digit anomaly detection (AUPRC)
#   make ance-table3 SCALE=...   Table 3: ablation on CelebA, 0/1/2/4/8 stages, adaptive vs non-adaptive (FID)
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

.PHONY: ance-table1 ance-table2 ance-table3
tables: $(RESULTS)/ance-table1.md $(RESULTS)/ance-table2.md $(RESULTS)/ance-table3.md

ance-table1: $(RESULTS)/ance-table1.md
$(RESULTS)/ance-table1.md: $(call gen_inputs,svhn celeba cifar10,ance4 mle,fid recon) $(RENDER_DEPS)
	$(call render,ance-table1,svhn celeba cifar10)

ance-table2: $(RESULTS)/ance-table2.md
$(RESULTS)/ance-table2.md: $(call ano_inputs,adaptive-nce mle pretrain pca) $(RENDER_DEPS)
	$(call render,ance-table2)

ance-table3: $(RESULTS)/ance-table3.md
$(RESULTS)/ance-table3.md: $(call gen_inputs,celeba,pretrain ance1 ance2 ance4 ance8 tre1 tre2 tre4 tre8,fid) $(RENDER_DEPS)
	$(call render,ance-table3,celeba)
