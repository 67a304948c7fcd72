"""The view an attack holds leads nowhere else: no attack module imports a system adapter or
reads a private attribute of anything but itself, and wrappers derive views through public
methods (NES over a subset view works)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import mallory
from mallory import Oracle, create
from mallory.access.view import OracleView
from mallory.zoo import load_dataset, load_model

ATTACKS = Path(mallory.__file__).parent / "attacks"
# The attacker's own model is a system it owns and attacks white-box: that module may build one.
OWN_MODEL = {"surrogate.py"}
# ``_run`` is the attack protocol (what a subclass implements): a wrapper runs its inner
# attack's ``_run`` on a view it derived.
PROTOCOL = {"_run"}


def attack_modules() -> list[Path]:
    return sorted(p for p in ATTACKS.rglob("*.py") if p.name not in OWN_MODEL)


@pytest.mark.parametrize("path", attack_modules(), ids=lambda p: str(p.relative_to(ATTACKS)))
def test_no_attack_module_reaches_past_the_view(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mallory.systems"):
            problems.append(f"line {node.lineno}: imports {node.module}")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mallory.systems"):
                    problems.append(f"line {node.lineno}: imports {alias.name}")
        if isinstance(node, ast.Attribute):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and not own and node.attr not in PROTOCOL:
                problems.append(f"line {node.lineno}: reads {ast.unparse(node)}")
            if node.attr == "system" and not own:
                problems.append(f"line {node.lineno}: reads {ast.unparse(node)}")
    assert not problems, f"{path.name} reaches past the view: " + "; ".join(problems)


def test_the_view_exposes_no_way_to_the_system_or_the_oracle() -> None:
    system = load_model("digits-mlp", progress=False)
    view = Oracle(system, mallory.white_box("linf", 0.1)).bind(torch.arange(3))
    public = {name for name in dir(view) if not name.startswith("_")}
    assert "system" not in public and "oracle" not in public
    for name in public:
        value = getattr(view, name)
        assert not isinstance(value, mallory.System | Oracle), name


def test_nes_runs_over_a_subset_view() -> None:
    torch.set_num_threads(1)
    system = load_model("digits-mlp", progress=False)
    data = load_dataset("digits", "test").head(12)
    oracle = Oracle(system, mallory.score_based("linf", 0.2, queries=400))
    ids = torch.arange(12)
    view = oracle.bind(ids)
    rows = torch.tensor([1, 4, 7, 10])
    sub = view.subset(rows)
    assert isinstance(sub, OracleView) and len(sub) == 4
    nes = create("nes", attack=create("pgd", steps=5), samples=10)
    noise = mallory.attacks.noise.Noise(0, ids[rows])
    x_adv = nes._run(sub, data.x[rows], data.y[rows], None, noise)
    assert x_adv.shape == data.x[rows].shape
    spent = oracle.queries_of(ids)
    # only the subset's samples were charged, each for whole estimates (1 + 2 * 10 rows)
    assert set(spent.nonzero().squeeze(1).tolist()) == set(rows.tolist())
    assert bool((spent[rows] % 21 == 0).all()) and int(spent[rows].min()) > 0
    with torch.no_grad():
        wrong = system.forward(x_adv).argmax(1) != data.y[rows]
    inside = (x_adv - data.x[rows]).abs().amax() <= 0.2 + 1e-6
    assert bool(inside) and bool(wrong.any())
