"""Poisoning: training data that plants a flaw in the model trained on it."""
