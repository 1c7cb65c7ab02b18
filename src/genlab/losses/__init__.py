"""Objectives as pure functions. Each returns one value per sample; the method reduces them."""
