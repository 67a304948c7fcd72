"""Campaign files: a TOML file naming the system, the data, the threat models and their attacks,
read into a :class:`~mallory.evaluation.campaign.Campaign` (the format: ``docs/campaign.md``).

Every mistake in the file is an :class:`~mallory.errors.InputError` that names the file and the
key path (``threat[1].attacks[0].steps``, arrays counted from 0), says what was wrong and what
the key accepts: TOML syntax (with line and column), unknown keys (with the closest known one),
wrong types, missing or conflicting keys, unknown models, datasets, presets and attacks, a model
file that is not there, data that does not fit the model, threat-model fields and attack
parameters that their own validation refuses, and attacks a threat model does not allow.

Example::

    loaded = load_campaign("examples/campaign.toml")
    report = loaded.run()  # resumes from loaded.store when the run is already there
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mallory.access.oracle import Oracle
from mallory.attacks.base import attack_class, create, list_attacks
from mallory.attacks.evasion.base import EvasionAttack
from mallory.attacks.extraction.base import ExtractionAttack
from mallory.attacks.surrogate import (
    ARCHITECTURE,
    EPOCHS,
    SEED,
    Architecture,
    Surrogate,
    train_surrogate,
)
from mallory.errors import AccessError, InputError
from mallory.evaluation.campaign import (
    SHARE,
    Campaign,
    Extraction,
    Listener,
    ThreatPlan,
    default_attacks,
)
from mallory.evaluation.config_data import (
    SAMPLES,
    DataChoice,
    SystemChoice,
    read_data,
    read_features,
    read_system,
)
from mallory.evaluation.config_table import Table, closest, kind, plain, resolve
from mallory.evaluation.economics import Economics
from mallory.params import Options, Text, constraints
from mallory.threat import PRESETS, Goal, Targets, ThreatModel
from mallory.threat.model import PRESET

if TYPE_CHECKING:
    from mallory.report.model import Report

__all__ = ["CampaignFile", "load_campaign", "parse_campaign"]

TOP_KEYS = (
    "name",
    "seed",
    "store",
    "chunk",
    "review_band",
    "draws",
    "system",
    "data",
    "threat",
    "economics",
    "check",  # the gate's thresholds: read by mallory.evaluation.gate, not part of the run
)
CAMPAIGN = constraints(Campaign)
CAMPAIGN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Campaign)}
ECONOMICS = constraints(Economics)
THREAT = constraints(ThreatModel)
"""What each ``[[threat]]`` key of a ThreatModel field accepts: the field's own constraint."""
THREAT_FIELDS = tuple(THREAT)
THREAT_KEYS = ("preset", *THREAT_FIELDS, "grid", "attacks", "surrogate")
SURROGATE_KEYS = ("source", "samples", "architecture", "epochs", "seed", "rounds", "lam")
SOURCES = ("own-data", "extract")
SOURCE = Options(SOURCES)
# own data: up to this many labelled samples; extraction: this many seed points (Papernot et al.)
SURROGATE_SAMPLES = {"own-data": 1000, "extract": 150}
SURROGATE_EPOCHS = {"own-data": 5, "extract": 10}
EXTRACTION_ROUNDS = 4
EXTRACTION_LAM = 0.1

T = TypeVar("T")


@dataclass(frozen=True)
class CampaignFile:
    """A campaign read from a file, and the store its run goes to."""

    campaign: Campaign
    store: Path

    def run(self, *, progress: bool = True, listener: Listener | None = None) -> Report:
        """Run (or resume) the campaign in its store."""
        return self.campaign.run(self.store, progress=progress, listener=listener)


def load_campaign(path: str | Path, *, progress: bool = True) -> CampaignFile:
    """Read and validate the campaign file at ``path``; build its system, data and attacks.

    Relative paths in the file (the model, the data, the store) are read from the file's
    folder. ``progress`` shows the training of a zoo model that is not cached yet. Building
    the attacks may train a surrogate (``[threat.surrogate]``), which takes seconds.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"No campaign file at {file.resolve()}: it {what}.")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{file}: not UTF-8 text ({error}); a campaign file is TOML.") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(
            f"{file}: not valid TOML: {error}. See docs/campaign.md for the format."
        ) from None
    return parse_campaign(data, base=file.resolve().parent, where=str(file), progress=progress)


def parse_campaign(
    data: dict[str, Any], *, base: Path, where: str, progress: bool = True
) -> CampaignFile:
    """A campaign from the parsed TOML ``data``: paths are read from ``base``, errors name
    ``where``, whose stem is the default run name and store name."""
    top = Table(data, "", where, TOP_KEYS)
    stem = Path(where).stem or "campaign"
    name = top.read("name", CAMPAIGN["name"], stem)
    seed, chunk, band, draws = (
        top.read(key, CAMPAIGN[key], CAMPAIGN_DEFAULTS[key])
        for key in ("seed", "chunk", "review_band", "draws")
    )
    store = resolve(base, top.read("store", Text(), f"{stem}.db"))
    system = read_system(top.get("system"), base=base, where=where, progress=progress)
    chosen = read_data(top.get("data", None), system, base=base, where=where)
    threats = top.get("threat")
    if not isinstance(threats, list) or not threats:
        got = "an empty array" if threats == [] else f"{kind(threats)}"
        raise top.fail(
            "threat",
            f"must be a non-empty array of tables, one [[threat]] per threat model; got {got}.",
        )
    economics = _read_economics(top, where)
    context = _Context(where, seed, system, chosen, {})
    plans: list[ThreatPlan] = []
    for i, values in enumerate(threats):
        plan = _read_threat(values, i, context)
        for j, other in enumerate(plans):
            if other.threat.name == plan.threat.name:
                table = Table(values, f"threat[{i}]", where, THREAT_KEYS)
                raise table.fail(
                    "name" if table.has("name") else None,
                    f"the name {plan.threat.name!r} is already used by threat[{j}]; threat "
                    'model names must be unique in a campaign: give each a name = "...".',
                )
        plans.append(plan)
    try:
        campaign = Campaign(
            name=name,
            system=system.system,
            data=chosen.evaluated,
            plans=tuple(plans),
            seed=seed,
            chunk=chunk,
            review_band=band,
            draws=draws,
            economics=economics,
            system_name=system.name,
            source=plain({k: v for k, v in data.items() if k != "check"}),
        )
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    return CampaignFile(campaign, store)


def _read_economics(top: Table, where: str) -> Economics | None:
    """The ``[economics]`` table: the defender's figures for the report's risk rows."""
    if not top.has("economics"):
        return None
    table = Table(top.get("economics"), "economics", where, tuple(ECONOMICS))
    if not table.has("damage"):
        raise table.fail(
            None, "needs damage = <money lost per successful evasion> (a number >= 0)."
        )
    return Economics(
        **{key: table.read(key, ECONOMICS[key]) for key in ECONOMICS if table.has(key)}
    )


@dataclass(frozen=True)
class _Context:
    where: str
    seed: int
    system: SystemChoice
    data: DataChoice
    surrogates: dict[tuple[Any, ...], Surrogate]  # own-data surrogates, shared across threats


def _blame(build: Callable[..., T], params: dict[str, Any], table: Table, prefix: str = "") -> T:
    """``build(**params)``; an InputError is reported at the key of the parameter that is
    refused on its own, or at ``prefix`` (the table itself when empty) when only the
    combination is."""
    try:
        return build(**params)
    except InputError as error:
        for key, value in params.items():
            try:
                build(**{key: value})
            except InputError as alone:
                raise table.fail(prefix + key, str(alone)) from None
        raise table.fail(prefix.rstrip(".") or None, str(error)) from None


# ------------------------------------------------------------------------ [[threat]]
def _read_threat(values: Any, i: int, context: _Context) -> ThreatPlan:
    table = Table(values, f"threat[{i}]", context.where, THREAT_KEYS)
    preset = table.read("preset", PRESET)
    changes = {key: _threat_value(table, key, context) for key in THREAT_FIELDS if table.has(key)}
    threat = _blame(PRESETS[preset], changes, table)
    grid = table.read("grid", constraints(ThreatPlan)["grid"], False)
    if grid and threat.goal is not Goal.TARGETED:
        raise table.fail(
            "grid",
            f'grid = true (the source x target grid) needs goal = "targeted"; the threat '
            f"model {threat.name!r} is {threat.goal.value}.",
        )
    if grid:
        threat = threat.with_(targets=Targets.GIVEN)
    elif threat.goal is Goal.TARGETED and threat.targets is Targets.GIVEN:
        raise table.fail(
            "targets",
            'targets = "given" needs targets passed with the data, which a campaign file has '
            'not: use targets = "random", or grid = true.',
        )
    surrogate = _Surrogates(table, threat, context)
    shares: list[float | None] = []
    if table.has("attacks"):
        attacks = _read_attacks(table, surrogate, shares)
        if table.has("surrogate") and not any(_takes_surrogate(a) for _, a in attacks):
            raise table.fail(
                "surrogate",
                'no attack of this threat model uses a surrogate: add "transfer" to attacks, '
                "or leave attacks out (the defaults then include transfer).",
            )
    else:
        built = surrogate.get(None)
        chosen = default_attacks(
            threat,
            context.system.system,
            surrogate=built,
            extracted=surrogate.extraction is not None,
        )
        if not chosen:
            raise table.fail(
                None,
                f"no default attack fits the threat model {threat.name!r} (norm "
                f"{threat.norm.value}, eps {threat.eps}, exposure {threat.exposure.value}); "
                "name its attacks = [...].",
            )
        attacks = list(enumerate(chosen))
    oracle = Oracle(context.system.system, threat)
    for j, attack in attacks:
        if surrogate.extraction is not None and _takes_surrogate(attack):
            continue  # its surrogate is extracted during the run, and checked then
        try:
            attack.check_applicable(oracle)
        except (InputError, AccessError) as error:
            raise table.fail(
                f"attacks[{j}]", f"the threat model {threat.name!r} does not allow it: {error}"
            ) from None
    try:
        return ThreatPlan(
            threat=threat,
            attacks=tuple(a for _, a in attacks),
            grid=grid,
            shares=tuple(shares) if any(s is not None for s in shares) else None,
            extraction=surrogate.extraction,
        )
    except InputError as error:
        raise table.fail(None, str(error)) from None


def _threat_value(table: Table, key: str, context: _Context) -> Any:
    """A ThreatModel field from TOML, read by the field's constraint; the checks across
    fields are ThreatModel's own. Stage names must be the system's, and features name the
    data's features."""
    if key == "features":
        return read_features(table, context.data.evaluated)
    value = table.read(key, THREAT[key])
    if key == "stage_knowledge":
        stages = [stage.name for stage in context.system.system.stages]
        for stage, _ in value:
            if stage not in stages:
                raise table.fail(
                    f"{key}.{stage}",
                    f"the system has no stage of that name{closest(stage, stages)}; its stages: "
                    f"{', '.join(stages)}.",
                )
    return value


# ------------------------------------------------------------------------ attacks
def _takes_surrogate(attack: EvasionAttack) -> bool:
    return any(f.name == "surrogate" for f in dataclasses.fields(attack))


def _read_attacks(
    table: Table, surrogate: _Surrogates, shares: list[float | None]
) -> list[tuple[int, EvasionAttack]]:
    """The attacks of a threat model; the ``share`` of each (None: automatic) goes to
    ``shares``, in order."""
    values = table.get("attacks")
    known = list_attacks()
    if not isinstance(values, list) or not values:
        raise table.fail(
            "attacks",
            'must be a non-empty array of attack names or tables {name = "...", parameter = '
            f"value, ...}}; got {values!r}. Leave it out for the default attacks.",
        )
    attacks = []
    for j, item in enumerate(values):
        at = f"attacks[{j}]"
        name: Any
        if isinstance(item, str):
            name, item, name_at = item, {}, at
        elif isinstance(item, dict):
            name, name_at = item.get("name"), f"{at}.name"
            if name is None:
                raise table.fail(name_at, "this key is required: the attack's registered name.")
        else:
            raise table.fail(
                at, f'must be an attack name or a table {{name = "...", ...}}; got {kind(item)}.'
            )
        if not isinstance(name, str) or name not in known:
            hint = closest(name, known) if isinstance(name, str) else ""
            raise table.fail(
                name_at, f"unknown attack {name!r}{hint}; known attacks: {', '.join(known)}."
            )
        rules = constraints(attack_class(name))
        fields = list(rules)
        for key in item:
            if key not in ("name", "share", *fields):
                raise table.fail(
                    f"{at}.{key}",
                    f"{name} has no such parameter{closest(key, fields)}; its parameters: "
                    f"{', '.join(fields)}.",
                )
        sub = Table(item, table.at(at), table.where, ("name", "share", *fields))
        shares.append(sub.read("share", SHARE, None))
        if "surrogate" in fields and sub.has("surrogate"):
            raise sub.fail(
                "surrogate",
                f"the surrogate of {name} is built from the threat's [threat.surrogate] "
                "table, not given here.",
            )
        params = {key: sub.read(key, rules[key]) for key in item if key in rules}
        if "surrogate" in fields:
            params["surrogate"] = surrogate.get(at)
        attacks.append((j, _blame(_creator(name), params, table, f"{at}.")))
    return attacks


def _creator(name: str) -> Callable[..., EvasionAttack]:
    def build(**params: Any) -> EvasionAttack:
        return create(name, **params)

    return build


# ------------------------------------------------------------------------ [threat.surrogate]
class _Surrogates:
    """The surrogate of one threat model's transfer attacks, built on first use."""

    def __init__(self, table: Table, threat: ThreatModel, context: _Context) -> None:
        self.table, self.threat, self.context = table, threat, context
        self.built: Surrogate | None = None
        self.extraction: Extraction | None = None
        self.read = False

    def get(self, needed_at: str | None) -> Surrogate | None:
        """The surrogate; without a ``[threat.surrogate]`` table, None, or an error at
        ``needed_at`` (an attack that needs one)."""
        if not self.table.has("surrogate"):
            if needed_at is None:
                return None
            raise self.table.fail(
                needed_at,
                "a transfer attack needs the attacker's surrogate model: add a "
                '[threat.surrogate] table to this threat model, with source = "own-data" '
                '(trained on data disjoint from the evaluated samples) or source = "extract" '
                "(trained on labels bought from the system, queries counted).",
            )
        if not self.read:
            self.read = True
            self.built = self._build()
        return self.built

    def _build(self) -> Surrogate | None:
        table, context = self.table, self.context
        sub = Table(table.get("surrogate"), table.at("surrogate"), table.where, SURROGATE_KEYS)
        system = context.system.system
        source = sub.read("source", SOURCE)
        image = len(system.input_shape) == 3
        architecture = sub.read(
            "architecture", ARCHITECTURE, Architecture.CNN if image else Architecture.MLP
        )
        if architecture is Architecture.CNN and not image:
            raise sub.fail(
                "architecture",
                f'"cnn" needs image inputs (channels, height, width); the system takes '
                f'{tuple(system.input_shape)}. Use "mlp".',
            )
        seed = sub.read("seed", SEED, context.seed)
        epochs = sub.read("epochs", EPOCHS, SURROGATE_EPOCHS[source])
        if source == "own-data":
            for key in ("rounds", "lam"):
                if sub.has(key):
                    raise sub.fail(key, 'is only read with source = "extract".')
        try:
            own = context.data.own_data()
        except InputError as error:
            raise sub.fail(None, str(error)) from None
        samples = sub.read("samples", SAMPLES, min(SURROGATE_SAMPLES[source], len(own)))
        if samples > len(own):
            raise sub.fail(
                "samples",
                f"asks for {samples}, but the attacker's own data ({own.name}, disjoint from the "
                f"evaluated samples) has {len(own)}; give at most {len(own)}.",
            )
        if source == "own-data":
            memo = (samples, architecture, epochs, seed)
            if memo not in context.surrogates:
                context.surrogates[memo] = train_surrogate(
                    own.x[:samples],
                    own.y[:samples],
                    architecture=architecture,
                    epochs=epochs,
                    seed=seed,
                    num_classes=system.num_classes,
                    bounds=system.bounds,
                )
            return context.surrogates[memo]
        if self.threat.queries_total == 0:
            raise sub.fail(
                None,
                "extraction buys the system's labels, but the threat model allows no query at "
                'all (queries_total = 0): raise queries_total, or use source = "own-data".',
            )
        extraction_rules = constraints(attack_class("jacobian-extraction"))
        rounds = sub.read("rounds", extraction_rules["rounds"], EXTRACTION_ROUNDS)
        lam = sub.read("lam", extraction_rules["lam"], EXTRACTION_LAM)
        # bought from the system during the run, through this threat model's oracle, so its
        # queries are in the campaign's ledger (and its budget)
        extraction: ExtractionAttack = _blame(
            lambda **params: create("jacobian-extraction", **params),
            {"rounds": rounds, "lam": lam, "architecture": architecture, "epochs": epochs},
            sub,
        )
        self.extraction = Extraction(attack=extraction, seed_x=own.x[:samples])
        return None
