"""``[system.layers]``: the layers of a deployed system, in a campaign file.

::

    [system]
    model = "phishing-gb"
    [system.layers]
    rate_limit = { rate = 10.0, burst = 20 }      # requests per second per account
    quota = 5000                                  # an account's queries, in all
    automation = { interval = 0.05, run = 20 }    # scripted request streams are flagged
    detector = { fpr = 0.001, k = 10 }            # a query-stream detector (Chen et al.)
    ensemble = [{ model = "phishing-logreg" }]    # more models vote (mean of probabilities)
    threshold = { class = 1, at = 0.5, review = [0.4, 0.6] }   # the decision; the band goes
                                                               #   to a human
    response = "ban"                              # a flag or a refusal: "block" or "ban"
    strikes = 3                                   # refusals before a ban
    refusal_label = 1                             # what a refusal shows under feedback = "label"

Every key is optional; the order of the admission checks is the automation check, the quota,
the rate limit, the query-stream detector (a ban comes first of all once given). What a layer
does with an input is one of four actions: allow (answer it), block (refuse it), send it to
review (the threshold's band) or ban the account. See :mod:`mallory.defenses.layers` and
:mod:`mallory.access.detectors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mallory.access.policies import Policy, RateLimit
from mallory.defenses.layers import RESPONSES, AutomationCheck, Quota, ensemble, layered, threshold
from mallory.errors import InputError
from mallory.evaluation.config_table import Table
from mallory.params import Interval, ListOf, Options
from mallory.systems.base import Stage, System

LAYER_KEYS = (
    "rate_limit",
    "quota",
    "automation",
    "detector",
    "ensemble",
    "threshold",
    "response",
    "strikes",
    "refusal_label",
)
POSITIVE = Interval(low=0.0, low_open=True)


def read_layers(
    values: Any,
    system: System,
    *,
    base: Path,
    where: str,
    at: str,
    progress: bool,
    dataset: str | None = None,
) -> System:
    """``system`` with the layers of the ``[system.layers]`` table ``values``."""
    from mallory.evaluation.config_data import read_system

    table = Table(values, f"{at}.layers", where, LAYER_KEYS)
    policies: list[Policy] = []
    if table.has("automation"):
        sub = Table(table.get("automation"), table.at("automation"), where, ("interval", "run"))
        policies.append(
            AutomationCheck(
                interval=sub.read("interval", POSITIVE, 0.2),
                run=sub.read("run", Interval(low=2, integral=True), 20),
            )
        )
    if table.has("quota"):
        policies.append(Quota(table.read("quota", Interval(low=1, integral=True))))
    if table.has("rate_limit"):
        sub = Table(
            table.get("rate_limit"), table.at("rate_limit"), where, ("rate", "burst", "per")
        )
        policies.append(
            RateLimit(
                sub.read("rate", POSITIVE),
                burst=sub.read("burst", Interval(low=1.0), 1.0),
                per=sub.read("per", Options(("requests", "rows")), "requests"),
            )
        )
    if table.has("detector"):
        policies.append(_detector(table, where, dataset))
    model = system
    if table.has("ensemble"):
        members = table.get("ensemble")
        if not isinstance(members, list) or not members:
            raise table.fail("ensemble", "must be an array of [system]-like tables.")
        others = []
        for i, member in enumerate(members):
            try:
                choice = read_system(member, base=base, where=where, progress=progress)
            except InputError as error:
                raise InputError(
                    str(error).replace(f"{where}: system", f"{where}: {table.at('ensemble')}[{i}]")
                ) from None
            others.append(choice.system)
        try:
            model = ensemble([system, *others], name=f"{system.name} ensemble")
        except InputError as error:
            raise table.fail("ensemble", str(error)) from None
    stages: list[Stage] = []
    if table.has("threshold"):
        sub = Table(table.get("threshold"), table.at("threshold"), where, ("class", "at", "review"))
        positive = sub.read("class", Interval(low=0, high=system.num_classes - 1, integral=True))
        review = (
            sub.read("review", ListOf(Interval(low=0.0, high=1.0), length=2, order="<="))
            if sub.has("review")
            else None
        )
        stages.append(
            threshold(positive, sub.read("at", Interval(low=0.0, high=1.0), 0.5), review=review)
        )
    try:
        return layered(
            model,
            policies=policies,
            stages=stages,
            response=table.read("response", Options(RESPONSES), "block"),
            strikes=table.read("strikes", Interval(low=1, integral=True), 1),
            refusal_label=table.read(
                "refusal_label",
                Interval(low=0, high=system.num_classes - 1, integral=True),
                None,
            ),
            name=f"{system.name} (layered)",
        )
    except InputError as error:
        raise table.fail(None, str(error)) from None


def _detector(table: Table, where: str, dataset: str | None) -> Policy:
    """``detector = { threshold, fpr, k, response }``: a stateful query-stream detector, its
    threshold given or calibrated on the zoo model's training data to flag ``fpr`` of it."""
    from mallory.access.detectors import Response, StatefulDetector

    sub = Table(
        table.get("detector"), table.at("detector"), where, ("threshold", "fpr", "k", "response")
    )
    k = sub.read("k", Interval(low=1, integral=True), 10)
    response = sub.read("response", Options(tuple(r.value for r in Response)), "flag")
    if sub.has("threshold"):
        if sub.has("fpr"):
            raise sub.fail("fpr", "give threshold or fpr, not both.")
        return StatefulDetector(sub.read("threshold", POSITIVE), k=k, response=response)
    if dataset is None:
        raise sub.fail(
            None,
            "needs threshold = <distance>: only a zoo model comes with benign training data "
            "to calibrate the detector on (StatefulDetector.calibrate finds a threshold from "
            "benign inputs).",
        )
    from mallory.zoo import load_dataset

    fpr = sub.read("fpr", Interval(low=0.0, high=1.0, low_open=True), 0.001)
    benign = load_dataset(dataset, "train").x
    return StatefulDetector.calibrate(benign, fpr=fpr, k=k, response=response)
