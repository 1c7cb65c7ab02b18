"""Evaluation: features -> statistics -> metric, one protocol for every family.

features.py (Inception through torch-fidelity, or a labelled random stand-in), fidelity.py (FID,
KID, IS, precision/recall), swd.py, image.py (SSIM/PSNR/MS-SSIM, nearest neighbours), ppl.py, and
evaluate.py, which runs them and attaches a protocol string to every number."""
