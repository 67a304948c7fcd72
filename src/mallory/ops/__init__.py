"""Tensor operations shared by attacks and defenses (image transformations)."""
