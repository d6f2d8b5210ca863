# recipes/joint.mk — joint latent-space EBM prior for a multi-layer generator, Cui, Wu, Han (CVPR 2023),
# arXiv:2306.06323
#   make joint-table1 SCALE=...   Table 1: sample FID on SVHN, CelebA-64, CIFAR-10 (with LEBM beside it)
#   make joint-table4 SCALE=...   Table 4: MNIST hold-one-digit anomaly detection (AUPRC)
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

.PHONY: joint-table1 joint-table4
tables: $(RESULTS)/joint-table1.md $(RESULTS)/joint-table4.md

joint-table1: $(RESULTS)/joint-table1.md
$(RESULTS)/joint-table1.md: $(call gen_inputs,svhn celeba cifar10,joint-mle mle,fid) $(RENDER_DEPS)
	$(call render,joint-table1,svhn celeba cifar10)

joint-table4: $(RESULTS)/joint-table4.md
$(RESULTS)/joint-table4.md: $(call ano_inputs,joint-mle mle pretrain pca) $(RENDER_DEPS)
	$(call render,joint-table4)
