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


_LONGEST = 200  # characters of a value's repr shown in a message


def shown(value: object) -> str:
    """The repr of ``value`` for a message, cut short when long (a tensor, a dataset)."""
    text = repr(value)
    return text if len(text) <= _LONGEST else text[: _LONGEST - 5] + " ...>"


def bad_param(owner: str, name: str, expected: str, got: object, reason: str = "") -> InputError:
    """The one message form for a bad parameter value: "The 'steps' parameter of PGD must be
    an int >= 1; got 0 instead." (``reason``, when given, follows after a colon)."""
    end = f": {reason}" if reason else "."
    return InputError(
        f"The {name!r} parameter of {owner} must be {expected}; got {shown(got)} instead{end}"
    )
