"""Analyses of a trained run (reconstructions, and the comparisons the seed reports made by hand)."""
