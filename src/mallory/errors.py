"""The exceptions mallory raises.

::

    MalloryError                 every error mallory raises on purpose
    ├── InputError (ValueError)  bad user input: a parameter, a shape, a value, a file
    ├── AccessError              an attack needs more than the threat model grants
    └── SystemFailure            the system under test raised or answered nonsense

Every message says what was wrong, what was expected, and what to do.
"""

from __future__ import annotations


class MalloryError(Exception):
    """Base class of every error mallory raises on purpose."""


class InputError(MalloryError, ValueError):
    """A parameter, tensor, file or configuration value is not what mallory expects."""


class AccessError(MalloryError):
    """An attack needs access (gradients, scores) that the oracle's threat model does not grant."""


class SystemFailure(MalloryError):
    """The system under test raised an exception or returned malformed outputs."""


def bad_param(owner: str, name: str, expected: str, got: object) -> InputError:
    """The one message form for a bad parameter value."""
    return InputError(f"The {name!r} parameter of {owner} must be {expected}; got {got!r} instead.")
