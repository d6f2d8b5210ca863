# recipes/lebm.mk — LEBM, Pang et al. (NeurIPS 2020), arXiv:2006.08205
#   make lebm-table1 SCALE=smoke|cpu|paper   Table 1: test MSE and sample FID on SVHN, CIFAR-10, CelebA-64
#   make lebm-table4 SCALE=smoke|cpu|paper   Table 4: MNIST hold-one-digit anomaly detection (AUPRC)
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

.PHONY: lebm-table1 lebm-table4
tables: $(RESULTS)/lebm-table1.md $(RESULTS)/lebm-table4.md

lebm-table1: $(RESULTS)/lebm-table1.md
$(RESULTS)/lebm-table1.md: $(call gen_inputs,svhn cifar10 celeba,mle pretrain,fid recon) $(RENDER_DEPS)
	$(call render,lebm-table1,svhn cifar10 celeba)

lebm-table4: $(RESULTS)/lebm-table4.md
$(RESULTS)/lebm-table4.md: $(call ano_inputs,mle pretrain pca) $(RENDER_DEPS)
	$(call render,lebm-table4)
