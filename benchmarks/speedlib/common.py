"""Constants shared by the speed benchmark's modules: the sizes, the batch and the workloads of the main table."""

from __future__ import annotations


SIZES = {  # arch: (nz, ngf, channels)
    "mnist32": (16, 32, 1),
    "svhn32": (100, 64, 3),
    "cifar32": (128, 128, 3),  # LEBM's CIFAR-10 generator (8x8 first layer); on a GPU (benchmarks/gpu_check.py)
}
DEFAULT_SIZES = ["mnist32", "svhn32"]
BATCH = 100
N_DATA = 500  # synthetic training set (only one batch is used; the NCE memory has one row per example)
SAMPLE_STEPS = 100


WORKLOADS = [  # name, unit, items per call, ebmtool fn, reference fn (always fp32: the listing)
    ("mle", "it/s", 1, "ebm_mle", "ref_mle_iter"),
    ("adaptive-nce", "it/s", 1, "ebm_nce", "ref_nce_iter"),
    ("mle bf16", "it/s", 1, "ebm_mle_bf16", "ref_mle_iter"),  # only where bf16 is native (--precision auto's rule)
    ("adaptive-nce bf16", "it/s", 1, "ebm_nce_bf16", "ref_nce_iter"),
    ("sample", "img/s", BATCH, "ebm_sample", "ref_sample"),
    ("reconstruct", "img/s", BATCH, "ebm_reconstruct", "ref_reconstruct"),
]
