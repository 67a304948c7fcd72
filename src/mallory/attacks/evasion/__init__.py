"""Evasion attacks: adversarial inputs at test time, one module per attack or family."""
