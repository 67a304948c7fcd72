"""The cheapest evasions of the phishing detector: what each page's author would pay, and for
which edits.

Runs campaign.toml (the zoo's gradient-boosted detector, the test split, the ``cheapest``
attack under the priced constraints of constraints.toml; resumed from its store when run
before), then prices every evasion it found with the same constraints and prints:

- per page the detector flags as phishing: the price of its cheapest evasion and the edits;
- the spread of those prices (median, quartiles, how many pages fall under $10, $50, ...);
- the edits attackers would use, by how many cheapest evasions use them;
- the same for an attacker whose lure needs its pop-up (popup_window kept as it is), found by
  the same attack run directly on the pages the campaign attacked.

    .venv/bin/python examples/phishing/cheapest.py [--all] [--json out.json]

``--all`` lists every page (not only the first 40); ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from mallory import Oracle, create
from mallory.evaluation.config import load_campaign
from mallory.store import Store
from mallory.threat.features import FeatureConstraints

HERE = Path(__file__).resolve().parent
SHOWN = 40  # pages listed without --all
PHISHING = 1  # the detector's class index for phishing pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="list every page")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    args = parser.parse_args()

    loaded = load_campaign(HERE / "campaign.toml", progress=False)
    campaign = loaded.campaign
    features = campaign.plans[0].threat.features
    assert features is not None  # campaign.toml gives them
    shape = tuple(campaign.system.input_shape)
    with Store(loaded.store) as db:
        campaign.run(db, progress=False)
        samples = db.samples(campaign.name, shape)
        outcomes = db.outcomes(campaign.name, 0, 0, shape, inputs=True)
    x = {int(i): samples.x[k] for k, i in enumerate(samples.ids)}
    label = {int(i): int(samples.labels[k]) for k, i in enumerate(samples.ids)}
    rows = []
    for k, sid in enumerate(outcomes.ids.tolist()):
        won = bool(outcomes.success[k])
        cost, edits = math.inf, ()
        if won:
            adv, clean = outcomes.x_adv[sid][None], x[sid][None]
            cost = float(features.cost(adv, clean)[0])
            edits = features.edits(adv, clean)[0]
        rows.append(
            {
                "id": sid,
                "label": campaign.system.class_names[label[sid]],
                "evaded": won,
                "cost": cost,
                "queries": int(outcomes.queries[k]),
                "edits": list(edits),
            }
        )
    report(rows, show_all=args.all)
    # what if the pop-up has to stay: the same search, one feature fewer
    kept = without(features, "popup_window")
    threat = campaign.plans[0].threat.with_(features=kept, queries_per_sample=None)
    attacked = torch.tensor([r["id"] for r in rows])
    index = {int(i): k for k, i in enumerate(samples.ids)}
    picked = torch.tensor([index[int(i)] for i in attacked])
    result = create("cheapest", search="exact", chunk=1)(
        Oracle(campaign.system, threat), samples.x[picked], samples.labels[picked], ids=attacked
    )
    print("\n--- if the pop-up has to stay (popup_window not mutable) ---\n")
    kept_rows = [
        {
            "id": int(i),
            "label": row["label"],
            "evaded": bool(result.success[k]),
            "cost": float(result.edit_cost[k]),
            "queries": int(result.queries[k]),
            "edits": list(result.edits[k]),
        }
        for k, (i, row) in enumerate(zip(attacked.tolist(), rows, strict=True))
    ]
    report(kept_rows, show_all=args.all)
    if args.json:
        both = {"constraints": rows, "popup_kept": kept_rows}
        args.json.write_text(json.dumps(both, indent=1, default=str))
        print(f"\nrows written to {args.json}")


def without(features: FeatureConstraints, name: str) -> FeatureConstraints:
    """``features`` with the mutable feature ``name`` made immutable."""
    plain = features.to_dict()
    drop = plain["mutable"].index(features.names.index(name))
    for key in ("mutable", "values", "ranges", "directions", "prices", "unit_prices"):
        if plain.get(key):
            del plain[key][drop]
    return FeatureConstraints.from_dict({**plain, "names": features.names})


def report(rows: list[dict[str, Any]], *, show_all: bool) -> None:
    pages = [r for r in rows if r["label"] == "phishing"]
    print(
        f"Cheapest evasions of phishing-gb ({len(rows)} test pages it gets right, "
        f"{len(pages)} of them phishing), prices in US dollars per page (constraints.toml)\n"
    )
    print(f"{'page':>5}  {'price':>8}  {'queries':>7}  edits")
    for row in pages if show_all else pages[:SHOWN]:
        price = f"{row['cost']:8.2f}" if row["evaded"] else f"{'none':>8}"
        print(f"{row['id']:>5}  {price}  {row['queries']:>7}  {'; '.join(row['edits'])}")
    if not show_all and len(pages) > SHOWN:
        print(f"  ... {len(pages) - SHOWN} more (--all lists them)")
    for who, group in (("phishing pages", pages), ("all pages", rows)):
        summarize(who, group)
    used = collections.Counter(
        edit.split(":")[0] for row in pages if row["evaded"] for edit in row["edits"]
    )
    moves = collections.Counter(edit for row in pages if row["evaded"] for edit in row["edits"])
    evaded = sum(row["evaded"] for row in pages)
    print(f"\nEdits of the {evaded} cheapest evasions of phishing pages (share of evasions):")
    for feature, count in used.most_common():
        print(f"  {feature:<28} {count:>4}  {count / max(evaded, 1):6.1%}")
    print("\nMost used single edits:")
    for move, count in moves.most_common(8):
        print(f"  {move:<40} {count:>4}")
    sizes = collections.Counter(len(row["edits"]) for row in pages if row["evaded"])
    print(
        "\nFeatures edited per evasion: " + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items()))
    )


def summarize(who: str, rows: list[dict[str, Any]]) -> None:
    prices = sorted(r["cost"] for r in rows if r["evaded"])
    if not prices:
        print(f"\n{who}: no evasion found")
        return
    q = statistics.quantiles(prices, n=4) if len(prices) > 1 else [prices[0]] * 3
    under = ", ".join(
        f"<= ${limit}: {sum(p <= limit for p in prices) / len(rows):.0%}" for limit in (5, 20, 100)
    )
    print(
        f"\n{who}: {len(prices)} of {len(rows)} evaded; price median ${q[1]:.2f} "
        f"(quartiles ${q[0]:.2f} to ${q[2]:.2f}, min ${prices[0]:.2f}, max ${prices[-1]:.2f}); "
        f"share of pages evaded for {under}"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
