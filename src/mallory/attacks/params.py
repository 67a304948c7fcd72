"""Declarative hyperparameters: the field shorthands of :mod:`mallory.params`.

An attack's fields are declared with :func:`integer`, :func:`real`, :func:`choice` or
:func:`flag` (or :func:`~mallory.params.param` with any constraint); the base class checks them
all after construction, so every attack, the CLI and configuration files get the same errors
("The 'steps' parameter of PGD must be an int >= 1; got 0 instead.") and the same help text.
"""

from __future__ import annotations

from mallory.params import Rule, choice, flag, integer, param, real

__all__ = ["Rule", "choice", "flag", "integer", "param", "real"]
