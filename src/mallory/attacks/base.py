"""What every attack is, whatever its kind, and the one registry.

An attack is configuration plus one call: a frozen, keyword-only dataclass of hyperparameters,
registered by name. Its kind says what the call takes and returns:

==============  ==============================================  ================================
kind            called with                                     returns
==============  ==============================================  ================================
evasion         a view of the oracle, inputs, labels            :class:`AttackResult`
extraction      a view of the oracle, seed inputs               :class:`ExtractionResult`
poisoning       training data (and a recipe that trains on it)  :class:`PoisoningResult`
inference       a view of the oracle, candidate records         :class:`InferenceResult`
==============  ==============================================  ================================

What the registry knows of an attack lives on its class, never in lists kept beside it:
``kind``, ``access`` (labels, scores, gradients), ``needs`` (a surrogate model, training data,
shadow models), ``family`` and ``rank`` (where a campaign runs it), ``default`` (whether a
campaign runs it when none is named), ``fast`` (parameters that make it quick on a tiny model,
for tests and conformance checks) and ``paper``. The CLI's choices, the configuration reader,
the documentation and the conformance suite all read these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

from mallory.access.oracle import Access
from mallory.errors import InputError
from mallory.params import RULE, Constraint, check_fields, integer

REGISTRY: dict[str, type[Attack]] = {}


class Kind(StrEnum):
    """What an attack does to the system."""

    EVASION = "evasion"  # adversarial inputs at test time
    EXTRACTION = "extraction"  # a copy of the model, bought with queries
    POISONING = "poisoning"  # training data that plants a flaw
    INFERENCE = "inference"  # facts about the training data (membership)


class Need(StrEnum):
    """What an attack needs besides its access to the system."""

    SURROGATE = "surrogate"  # a model of the attacker's own, to attack white-box
    TRAINING_DATA = "training-data"  # the defender's training set (to poison it)
    SHADOW_MODELS = "shadow-models"  # models trained like the target (membership inference)
    SEED_DATA = "seed-data"  # a few inputs of the task (to start extraction)


A = TypeVar("A", bound="type[Attack]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of every attack: parameters validated on construction, description, registry.

    Subclasses are the kind bases (:class:`~mallory.attacks.evasion.base.EvasionAttack`,
    :class:`~mallory.attacks.extraction.base.ExtractionAttack`, ...), which define the call.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = Kind.EVASION
    access: ClassVar[Access] = Access.GRADIENTS
    needs: ClassVar[frozenset[Need]] = frozenset()
    paper: ClassVar[str] = ""
    default: ClassVar[bool] = False  # run by a campaign when it names no attacks
    rank: ClassVar[int] = 0  # order within its family in a campaign, lower first
    fast: ClassVar[Mapping[str, Any]] = {}  # parameters that make it quick on a tiny model

    batch_size: int | None = integer(
        None, low=1, optional=True, help="samples attacked at once (None: all)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self._check()

    def _check(self) -> None:
        """Checks across parameters; override to add some."""

    # ------------------------------------------------------------------ description
    def params(self) -> dict[str, Any]:
        """The hyperparameters as plain values."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def test_params(cls, system: Any, x: Any, y: Any) -> dict[str, Any]:
        """Parameters that make the attack run quickly on a small ``system`` with samples
        ``x``, ``y`` (tests, conformance checks): ``fast`` by default; an attack that needs
        something built for the system (a surrogate) builds it here."""
        return dict(cls.fast)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, kind, paper, required access and needs, and every parameter with its help."""
        params = {}
        for f in dataclasses.fields(cls):
            rule: Constraint | None = f.metadata.get(RULE)
            default = f.default
            params[f.name] = {
                "default": default.value if isinstance(default, Enum) else default,
                "expected": rule.expected if rule else "",
                "help": f.metadata.get("help", ""),
            }
        return {
            "name": cls.name,
            "kind": cls.kind.value,
            "access": cls.access.name.lower(),
            "needs": sorted(n.value for n in cls.needs),
            "paper": cls.paper,
            "summary": " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()),
            "params": params,
            **cls._describe_more(),
        }

    @classmethod
    def _describe_more(cls) -> dict[str, Any]:
        """What a kind adds to the description (norms, goals, family for evasion)."""
        return {}


def register(name: str) -> Callable[[A], A]:
    """Class decorator adding an attack to the registry under ``name`` (unique)."""

    def add(cls: A) -> A:
        if name in REGISTRY:
            raise ValueError(
                f"An attack named {name!r} is already registered ({REGISTRY[name].__name__})."
            )
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


def list_attacks(kind: Kind | str | None = None) -> list[str]:
    """Registered attack names, sorted (of one kind, when given)."""
    _load_builtin()
    if kind is None:
        return sorted(REGISTRY)
    wanted = Kind(kind)
    return sorted(n for n, cls in REGISTRY.items() if cls.kind is wanted)


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``."""
    _load_builtin()
    if name not in REGISTRY:
        raise InputError(f"No attack named {name!r}. Known attacks: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def create(name: str, **params: Any) -> Any:
    """Build the attack registered as ``name`` with ``params`` (unknown names are an error)."""
    cls = attack_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(
            f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}. "
            f"Its parameters: {', '.join(sorted(known))}."
        )
    return cls(**params)


def _load_builtin() -> None:
    import mallory.attacks  # noqa: F401  (registers the built-in attacks)
