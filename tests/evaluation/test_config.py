"""Campaign files: a valid file becomes the expected Campaign, and every malformed or
inconsistent one is an InputError naming the file, the key path and what the key accepts."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mallory import InputError
from mallory.evaluation.campaign import default_attacks
from mallory.evaluation.config import (
    ECONOMICS,
    SURROGATE_KEYS,
    THREAT_KEYS,
    TOP_KEYS,
    CampaignFile,
    load_campaign,
    parse_campaign,
)
from mallory.evaluation.config_data import DATA_KEYS, FEATURE_KEYS, SYSTEM_KEYS
from mallory.evaluation.config_http import url_keys
from mallory.evaluation.config_layers import LAYER_KEYS
from mallory.threat import PRESETS, Exposure, Goal, Norm, Targets
from mallory.threat.features import FeatureConstraints
from mallory.zoo import load_dataset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "campaign.toml"
WHERE = "test.toml"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small networks train faster on one thread than on two that wait for a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def valid() -> dict[str, Any]:
    """A small valid campaign: the digits MLP on 20 test digits, two threat models."""
    return {
        "system": {"model": "digits-mlp"},
        "data": {"dataset": "digits", "samples": 20},
        "threat": [
            {"preset": "white-box", "eps": 0.3, "attacks": ["fgsm", {"name": "pgd", "steps": 5}]},
            {
                "preset": "label-only",
                "eps": 2.0,
                "queries_per_sample": 200,
                "attacks": [{"name": "hopskipjump", "max_queries": 200}],
            },
        ],
    }


def parse(data: dict[str, Any], base: Path) -> CampaignFile:
    return parse_campaign(data, base=base, where=WHERE, progress=False)


def write(folder: Path, text: str, name: str = "campaign.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- valid files
def test_a_valid_file_becomes_the_expected_campaign(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name = "demo"
        seed = 3
        store = "runs/demo.db"
        chunk = 7
        review_band = [0.2, 0.8]

        [system]
        model = "digits-mlp"
        name = "the digits MLP"

        [data]
        dataset = "digits"
        split = "train"
        samples = 30

        [[threat]]
        preset = "white-box"
        name = "white-box Linf"
        eps = 0.3
        attacks = [{ name = "pgd", steps = 5 }, "blur", "fgsm"]

        [[threat]]
        preset = "score-based"
        norm = "l2"
        eps = 2.0
        queries_per_sample = 200
        queries_total = inf
        price_per_query = 0.01
        attacks = ["square"]

        [[threat]]
        preset = "white-box"
        name = "targeted grid"
        goal = "targeted"
        eps = 0.3
        grid = true
        attacks = ["pgd"]
        """,
    )
    loaded = load_campaign(path, progress=False)
    campaign = loaded.campaign
    assert loaded.store == tmp_path / "runs" / "demo.db"
    assert (campaign.name, campaign.seed, campaign.chunk) == ("demo", 3, 7)
    assert campaign.review_band == (0.2, 0.8)
    assert campaign.system_name == "the digits MLP"
    assert campaign.system.name == "digits-mlp"
    assert len(campaign.data) == 30 and campaign.data.name == "digits"
    assert [p.threat.name for p in campaign.plans] == [
        "white-box Linf",
        "score-based",
        "targeted grid",
    ]
    white, score, grid = campaign.plans
    # cheapest attacker first (a trick before gradients), the file's order within a family
    assert [a.name for a in white.attacks] == ["blur", "pgd", "fgsm"]
    assert white.attacks[1].params()["steps"] == 5
    assert (white.threat.norm, white.threat.eps) == (Norm.LINF, 0.3)
    assert score.threat.norm is Norm.L2 and score.threat.exposure is Exposure.SCORES
    assert score.threat.queries_per_sample == 200
    assert score.threat.queries_total is None  # inf: no budget
    assert score.threat.price_per_query == 0.01
    assert grid.grid and grid.threat.goal is Goal.TARGETED
    assert grid.threat.targets is Targets.GIVEN
    # the run keeps the file's content, JSON-ready, to recognize the same campaign on resume
    with path.open("rb") as handle:
        parsed = tomllib.load(handle)
    assert campaign.source["threat"][1]["queries_total"] == "inf"
    assert campaign.source["data"] == parsed["data"]
    assert campaign.source["name"] == "demo"


def test_defaults_name_store_data_and_attacks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[system]\nmodel = "digits-mlp"\n\n[[threat]]\npreset = "white-box"\neps = 0.2\n',
        name="night-run.toml",
    )
    campaign = load_campaign(path, progress=False).campaign
    assert campaign.name == "night-run"
    assert load_campaign(path, progress=False).store == tmp_path / "night-run.db"
    assert (campaign.seed, campaign.chunk, campaign.review_band) == (0, 100, (0.0, 0.9))
    assert campaign.data.name == "digits" and len(campaign.data) == 359  # the whole test split
    (plan,) = campaign.plans
    assert plan.threat.name == "white-box"
    expected = default_attacks(plan.threat, campaign.system)
    assert [a.name for a in plan.attacks] == [a.name for a in expected]
    assert "pgd" in [a.name for a in plan.attacks]


def test_the_example_loads() -> None:
    loaded = load_campaign(EXAMPLE, progress=False)
    campaign = loaded.campaign
    assert loaded.store == EXAMPLE.parent / "digits-demo.db"
    assert campaign.name == "digits-demo" and len(campaign.data) == 100
    assert [p.threat.name for p in campaign.plans] == [
        "no-knowledge",
        "label-only",
        "score-based",
        "transfer",
        "white-box Linf",
    ]
    transfer = campaign.plans[3].attacks[0]
    assert transfer.name == "transfer"
    assert transfer.params()["surrogate"]["source"] == "own-data"
    assert transfer.params()["surrogate"]["training_size"] == 1000


@pytest.mark.slow
def test_the_example_runs(tmp_path: Path) -> None:
    with EXAMPLE.open("rb") as handle:
        data = tomllib.load(handle)
    data["data"]["samples"] = 8
    data["threat"][3]["surrogate"].update(samples=200, epochs=2)
    data["threat"][1]["attacks"] = [{"name": "hopskipjump", "max_queries": 100}]
    data["threat"][4]["attacks"] = ["fgsm", {"name": "pgd", "steps": 5}]
    loaded = parse_campaign(data, base=EXAMPLE.parent, where=str(EXAMPLE), progress=False)
    report = loaded.campaign.run(tmp_path / "run.db", progress=False)
    assert report.samples == 8
    assert [t.name for t in report.threats] == [p.threat.name for p in loaded.campaign.plans]
    for threat, plan in zip(report.threats, loaded.campaign.plans, strict=True):
        assert threat.samples == 8
        assert threat.robust_accuracy <= report.clean_accuracy
        ran = [a.attack for a in threat.attacks]  # attacks after the last sample fell are absent
        assert ran == [a.name for a in plan.attacks][: len(ran)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, to write a model file
def test_a_saved_model_and_a_data_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    torch.jit.save(module, str(tmp_path / "tiny.pt"))
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 4, 4), dtype=np.float32)
    y = np.arange(12) % 3
    np.savez(tmp_path / "tiny.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    data = {
        "system": {"path": "tiny.pt", "input_shape": [1, 4, 4], "bounds": [0, 1], "name": "t"},
        "data": {"path": "tiny.npz", "samples": 10},
        "threat": [{"preset": "white-box", "eps": 0.1, "attacks": ["fgsm"]}],
    }
    campaign = parse(data, tmp_path).campaign
    assert campaign.system.input_shape == (1, 4, 4) and campaign.system_name == "t"
    assert campaign.data.name == "tiny" and len(campaign.data) == 10
    assert campaign.data.class_names == ("a", "b", "c")
    assert torch.equal(campaign.data.y, torch.from_numpy(y[:10]))
    del data["data"]  # a model file does not say which data it takes
    with pytest.raises(InputError, match=r"^test\.toml: data: this key is required with system"):
        parse(data, tmp_path)


def test_feature_constraints_by_name(tmp_path: Path) -> None:
    data = {
        "system": {"model": "phishing-logreg"},
        "data": {"samples": 10},
        "threat": [
            {
                "preset": "no-knowledge",
                "eps": 1.0,
                "features": {"mutable": ["https", "long_url"], "values": {"https": [0, 1]}},
                "attacks": ["feature-edit"],
            }
        ],
    }
    campaign = parse(data, tmp_path).campaign
    assert campaign.data.name == "phishing"  # a zoo model's own dataset by default
    assert campaign.plans[0].threat.features == FeatureConstraints((2, 6), ((0.0, 1.0), ()))


def test_an_extracted_surrogate_counts_its_queries(tmp_path: Path) -> None:
    data = valid()
    data["threat"] = [
        {
            "preset": "transfer",
            "eps": 0.3,
            "surrogate": {
                "source": "extract",
                "samples": 20,
                "rounds": 1,
                "epochs": 1,
                "architecture": "mlp",
            },
        }
    ]
    campaign = parse(data, tmp_path).campaign
    (plan,) = campaign.plans
    names = [a.name for a in plan.attacks]
    assert names == ["transfer"]  # the defaults take the surrogate, extracted during the run
    assert plan.extraction is not None and plan.extraction.attack.name == "jacobian-extraction"
    assert len(plan.extraction.seed_x) == 20
    # the extraction's queries are the threat model's: in its ledger, before the transfer
    report = campaign.run(progress=False)
    first = report.threats[0].attacks[0]
    assert first.family == "extraction" and first.ledger.queries == 40  # 20 seeds, doubled once
    assert report.threats[0].ledger.queries == 40 + report.threats[0].attacks[1].ledger.queries


# ---------------------------------------------------------------- bad files
def test_toml_syntax_errors_say_where(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\nseed = = 1\n')
    with pytest.raises(InputError) as caught:
        load_campaign(path)
    message = str(caught.value)
    assert str(path) in message and "not valid TOML" in message
    assert "line 2" in message and "column" in message


def test_a_missing_campaign_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"No campaign file at .*nothing\.toml"):
        load_campaign(tmp_path / "nothing.toml")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to the valid campaign: ``path`` like ``threat.0.attacks`` gets ``value``."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return change


def _threat(**values: Any) -> Callable[[dict[str, Any]], None]:
    """Replace the first threat model by ``values``."""
    return _set("threat.0", values)


SURROGATE = {"source": "own-data", "samples": 50, "epochs": 1, "architecture": "mlp"}

BAD: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    # keys and types at the top
    ("unknown top key", _set("seeds", 1), ["test.toml: seeds: unknown key", "'seed'", "chunk"]),
    ("seed type", _set("seed", "1"), ["seed: must be an integer >= 0", "a string"]),
    ("seed negative", _set("seed", -1), ["seed: must be an integer >= 0"]),
    ("chunk zero", _set("chunk", 0), ["chunk: must be an integer >= 1"]),
    ("band order", _set("review_band", [0.9, 0.1]), ["review_band", "0 <= low <= high <= 1"]),
    ("band shape", _set("review_band", [0.5]), ["review_band", "[low, high]"]),
    ("name type", _set("name", 3), ["name: must be a non-empty string", "an integer"]),
    # [system]
    ("no system", _drop("system"), ["system: this key is required"]),
    ("system type", _set("system", "digits-mlp"), ["system: must be a table", "a string"]),
    ("system key", _set("system.modle", "x"), ["system.modle: unknown key", "'model'", "path"]),
    (
        "model and path",
        _set("system.path", "m.onnx"),
        ["system: give either model", "or path, not both"],
    ),
    ("no model", _set("system", {"name": "x"}), ["system: give one of model", "or url"]),
    (
        "unknown model",
        _set("system.model", "digits-mlpp"),
        ["system.model", "'digits-mlpp'", "did you mean 'digits-mlp'", "'phishing-logreg'"],
    ),
    (
        "path keys with a model",
        _set("system.input_shape", [1, 8, 8]),
        ["system.input_shape", "only read together with system.path"],
    ),
    # [data]
    (
        "unknown dataset",
        _set("data.dataset", "digit"),
        ["data.dataset", "did you mean 'digits'", "'mnist', 'phishing'"],
    ),
    ("bad split", _set("data.split", "val"), ["data.split", "'train', 'test', 'all'"]),
    ("too many samples", _set("data.samples", 5000), ["data.samples", "5000", "has 359"]),
    (
        "split with a file",
        _set("data", {"path": "d.npz", "split": "test"}),
        ["data.split", "only read together with data.dataset"],
    ),
    (
        "shape misfit",
        _set("data.dataset", "phishing"),
        ["data.dataset", "shape (9,)", "'digits-mlp' takes (1, 8, 8)"],
    ),
    (
        "shape misfit the other way",
        lambda d: d.update(system={"model": "phishing-logreg"}),
        ["data.dataset", "shape (1, 8, 8)", "'phishing-logreg' takes (9,)"],
    ),
    # [[threat]]
    ("no threat", _drop("threat"), ["threat: this key is required"]),
    ("empty threats", _set("threat", []), ["threat: must be a non-empty array", "an empty array"]),
    (
        "one table",
        _set("threat", {"preset": "white-box"}),
        ["threat: must be a non-empty array of tables", "[[threat]]", "a table"],
    ),
    ("no preset", _threat(eps=0.3), ["threat[0].preset: this key is required"]),
    (
        "unknown preset",
        _threat(preset="white_box"),
        ["threat[0].preset", "did you mean 'white-box'", "'score-based', 'label-only'"],
    ),
    (
        "unknown threat key",
        _set("threat.1.exposur", "scores"),
        ["threat[1].exposur: unknown key", "'exposure'", "queries_per_sample"],
    ),
    ("bad norm", _set("threat.0.norm", "l3"), ["threat[0].norm", "'linf', 'l2', 'l0'", "'l3'"]),
    ("bad eps", _set("threat.0.eps", -1), ["threat[0].eps", "a number >= 0"]),
    ("eps as text", _set("threat.0.eps", "0.3"), ["threat[0].eps", "a number >= 0", "'0.3'"]),
    (
        "bad exposure",
        _set("threat.1.exposure", "probabilities"),
        ["threat[1].exposure", "'logits', 'scores', 'top-k', 'label'"],
    ),
    ("top_k alone", _set("threat.1.top_k", 3), ["threat[1].top_k", "exposure='top-k'"]),
    ("adaptive type", _set("threat.0.adaptive", "yes"), ["threat[0].adaptive", "true or false"]),
    (
        "budget type",
        _set("threat.1.queries_per_sample", 1.5),
        ["threat[1].queries_per_sample", "integer >= 0, or inf for no budget"],
    ),
    ("price", _set("threat.1.price_per_query", -2), ["threat[1].price_per_query", ">= 0"]),
    (
        "stage knowledge",
        _set("threat.0.stage_knowledge", {"model": "most"}),
        ["threat[0].stage_knowledge", "'perfect', 'limited', 'zero'"],
    ),
    (
        "unknown stage",
        _set("threat.0.stage_knowledge", {"modle": "zero"}),
        ["threat[0].stage_knowledge.modle", "did you mean 'model'", "its stages: model"],
    ),
    ("threat type", _set("threat.0", "white-box"), ["threat[0]: must be a table", "a string"]),
    (
        "feature name on images",
        _set("threat.0.features", {"mutable": ["https"]}),
        ["threat[0].features.mutable[0]", "'https'", "index 0 to 63"],
    ),
    (
        "feature index out of range",
        _set("threat.0.features", {"mutable": [3, 64]}),
        ["threat[0].features.mutable[1]", "index 0 to 63"],
    ),
    (
        "features key",
        _set("threat.0.features", {"mutables": [3]}),
        ["threat[0].features.mutables: unknown key", "'mutable'"],
    ),
    (
        "duplicate preset names",
        _set("threat.1", {"preset": "white-box", "eps": 0.1, "attacks": ["fgsm"]}),
        ["threat[1]: the name 'white-box' is already used by threat[0]", 'name = "..."'],
    ),
    (
        "duplicate names",
        lambda d: [t.update(name="same") for t in d["threat"]],
        ["threat[1].name: the name 'same' is already used by threat[0]"],
    ),
    (
        "grid untargeted",
        _set("threat.0.grid", True),
        ["threat[0].grid", 'goal = "targeted"', "untargeted"],
    ),
    (
        "given targets",
        lambda d: d["threat"][0].update(goal="targeted", targets="given"),
        ["threat[0].targets", 'targets = "random"', "grid = true"],
    ),
    # attacks
    ("no attacks", _set("threat.0.attacks", []), ["threat[0].attacks: must be a non-empty array"]),
    ("attacks type", _set("threat.0.attacks", "pgd"), ["threat[0].attacks: must be a non-empty"]),
    (
        "unknown attack",
        _set("threat.0.attacks", ["fgsm", "pgdd"]),
        ["threat[0].attacks[1]: unknown attack 'pgdd'", "did you mean 'pgd'", "deepfool"],
    ),
    (
        "unknown attack in a table",
        _set("threat.0.attacks", [{"name": "fgms"}]),
        ["threat[0].attacks[0].name: unknown attack 'fgms'", "'fgsm'", "hopskipjump"],
    ),
    (
        "attack table without a name",
        _set("threat.0.attacks", [{"steps": 3}]),
        ["threat[0].attacks[0].name: this key is required"],
    ),
    ("attack type", _set("threat.0.attacks", [3]), ["threat[0].attacks[0]", "an integer"]),
    (
        "unknown parameter",
        _set("threat.0.attacks.1", {"name": "pgd", "stesp": 3}),
        ["threat[0].attacks[1].stesp", "did you mean 'steps'", "random_start"],
    ),
    (
        "bad parameter",
        _set("threat.0.attacks.1", {"name": "pgd", "steps": 0}),
        ["threat[0].attacks[1].steps", "must be an integer >= 1", "got an integer (0)"],
    ),
    (
        "bad choice parameter",
        _set("threat.0.attacks.1", {"name": "pgd", "loss": "hinge"}),
        ["threat[0].attacks[1].loss", "'ce', 'margin'"],
    ),
    (
        "bad inner attack",
        _threat(preset="score-based", eps=0.3, attacks=[{"name": "nes", "attack": "pgdd"}]),
        ["threat[0].attacks[0].attack", "No attack named 'pgdd'", "Known attacks"],
    ),
    (
        "gradients under label-only",
        _set("threat.1.attacks", ["hopskipjump", "fgsm"]),
        ["threat[1].attacks[1]", "'label-only' does not allow it", "fgsm needs gradients"],
    ),
    (
        "scores under label-only",
        _set("threat.1.attacks", ["square"]),
        ["threat[1].attacks[0]", "does not allow it", "square needs scores"],
    ),
    (
        "norm the attack lacks",
        _threat(preset="white-box", norm="l0", eps=3, attacks=["fgsm"]),
        ["threat[0].attacks[0]", "does not allow it", "fgsm works in l2, linf"],
    ),
    (
        "bounded attack, unbounded eps",
        _threat(preset="white-box", attacks=["fgsm"]),
        ["threat[0].attacks[0]", "'white-box' does not allow it", "finite eps"],
    ),
    # transfer and its surrogate
    (
        "transfer without surrogate",
        _threat(preset="transfer", eps=0.3, attacks=["transfer"]),
        ["threat[0].attacks[0]", "[threat.surrogate]", '"own-data"', '"extract"'],
    ),
    (
        "surrogate unused",
        _threat(preset="white-box", eps=0.3, attacks=["fgsm"], surrogate=SURROGATE),
        ["threat[0].surrogate", "no attack of this threat model uses", "transfer"],
    ),
    (
        "surrogate source",
        _threat(preset="transfer", eps=0.3, surrogate={"source": "own"}),
        ["threat[0].surrogate.source", "'own-data', 'extract'"],
    ),
    (
        "surrogate key",
        _threat(preset="transfer", eps=0.3, surrogate={**SURROGATE, "epoch": 2}),
        ["threat[0].surrogate.epoch: unknown key", "'epochs'", "architecture"],
    ),
    (
        "extraction keys with own data",
        _threat(preset="transfer", eps=0.3, surrogate={**SURROGATE, "rounds": 2}),
        ["threat[0].surrogate.rounds", 'source = "extract"'],
    ),
    (
        "surrogate samples",
        _threat(preset="transfer", eps=0.3, surrogate={**SURROGATE, "samples": 99999}),
        ["threat[0].surrogate.samples", "99999", "has 1438"],
    ),
    (
        "extraction without a budget",
        _threat(
            preset="transfer",
            eps=0.3,
            queries_total=0,
            surrogate={"source": "extract", "samples": 5, "architecture": "mlp"},
        ),
        ["threat[0].surrogate", "queries_total = 0"],
    ),
    (
        "surrogate given in the attack",
        _threat(
            preset="transfer",
            eps=0.3,
            attacks=[{"name": "transfer", "surrogate": "mine"}],
            surrogate=SURROGATE,
        ),
        ["threat[0].attacks[0].surrogate", "[threat.surrogate]"],
    ),
    (
        "no own data left",
        lambda d: (
            d["data"].update(split="all", samples=1797),
            d["threat"].append({"preset": "transfer", "eps": 0.3, "surrogate": SURROGATE}),
        ),
        ["threat[2].surrogate: every sample of digits", "data.samples", "no data of its own"],
    ),
]


@pytest.mark.parametrize(("change", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_campaigns_say_which_key_and_what_it_accepts(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], words: list[str]
) -> None:
    data = copy.deepcopy(valid())
    change(data)
    with pytest.raises(InputError) as caught:
        parse(data, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_a_missing_model_file_names_its_resolved_path(tmp_path: Path) -> None:
    data = valid()
    data["system"] = {"path": "models/net.onnx", "bounds": [0, 1]}
    with pytest.raises(InputError) as caught:
        parse(data, tmp_path)
    message = str(caught.value)
    assert "system.path: no model file at" in message
    assert str(tmp_path / "models" / "net.onnx") in message


def test_a_model_file_of_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "net.h5").write_bytes(b"")
    data = valid()
    data["system"] = {"path": "net.h5", "bounds": [0, 1]}
    with pytest.raises(InputError, match=r"system\.path: .*\.onnx.*\.pt2"):
        parse(data, tmp_path)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"x": np.zeros((4, 1, 8, 8), np.float32)}, ["no array y", "it holds x"]),
        (
            {"x": np.zeros((4, 1, 4, 4), np.float32), "y": np.zeros(4, np.int64)},
            ["data.path", "shape (1, 4, 4)", "takes (1, 8, 8)"],
        ),
        (
            {"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(4, np.float32)},
            ["data.path", "4 integer labels", "float32"],
        ),
        (
            {"x": np.full((4, 1, 8, 8), 2.0, np.float32), "y": np.zeros(4, np.int64)},
            ["data.path", "outside the system's input bounds"],
        ),
        (
            {"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.full(4, 12)},
            ["data.path", "labels from 12 to 12", "10 classes"],
        ),
        (
            {"x": np.array([[1], "a"], dtype=object), "y": np.zeros(2, np.int64)},
            ["data.path", "cannot read", "plain arrays", "allow_pickle"],
        ),
    ],
    ids=["no y", "shape", "float labels", "bounds", "labels", "objects"],
)
def test_bad_data_files(tmp_path: Path, arrays: dict[str, Any], words: list[str]) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    data = valid()
    data["data"] = {"path": "d.npz"}
    with pytest.raises(InputError) as caught:
        parse(data, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: data.path: "), message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_a_missing_data_file(tmp_path: Path) -> None:
    data = valid()
    data["data"] = {"path": "nowhere.npz"}
    with pytest.raises(InputError, match=r"data\.path: no data file at .*nowhere\.npz"):
        parse(data, tmp_path)


def test_the_unbounded_eps_is_toml_inf(tmp_path: Path) -> None:
    data = valid()
    data["threat"] = [{"preset": "white-box", "eps": math.inf, "attacks": ["deepfool"]}]
    (plan,) = parse(data, tmp_path).campaign.plans
    assert math.isinf(plan.threat.eps)


# ---------------------------------------------------------------- the reference
DOCS = Path(__file__).resolve().parents[2] / "docs" / "campaign.md"


def _toml_blocks() -> list[dict[str, Any]]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    return [tomllib.loads(block) for block in blocks]


def test_the_reference_documents_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    keys = {*TOP_KEYS, *SYSTEM_KEYS, *DATA_KEYS, *THREAT_KEYS, *SURROGATE_KEYS, *FEATURE_KEYS}
    keys |= {*LAYER_KEYS, *ECONOMICS, *url_keys()}
    missing = sorted(k for k in keys if f"| `{k}` |" not in text)
    assert not missing, f"docs/campaign.md has no table row for {missing}"
    for preset in PRESETS:
        assert f'| `"{preset}"` |' in text


def test_the_reference_examples_load(tmp_path: Path) -> None:
    complete, saved = (b for b in _toml_blocks() if "threat" in b and "system" in b)
    loaded = parse(complete, tmp_path)
    assert loaded.store == tmp_path / "runs" / "digits-audit.db"
    assert [p.threat.name for p in loaded.campaign.plans] == [
        "no-knowledge",
        "top-3 scores, paid",
        "transfer",
        "targeted grid",
        "minimal L2",
    ]
    # the saved-model example, with a zoo model in place of the ONNX file it names
    phishing = load_dataset("phishing", "test")
    (tmp_path / "data").mkdir()
    np.savez(
        tmp_path / "data" / "phishing-holdout.npz",
        x=phishing.x.numpy(),
        y=phishing.y.numpy(),
        feature_names=np.array(phishing.feature_names),
    )
    saved["system"] = {"model": "phishing-logreg"}
    saved["threat"][1]["surrogate"].update(samples=10, rounds=1)
    plans = parse(saved, tmp_path).campaign.plans
    assert plans[0].threat.features == FeatureConstraints((2, 6, 1), ((0.0, 1.0), (), ()))


def test_the_layers_and_economics_examples_of_the_reference_load(tmp_path: Path) -> None:
    (layers,) = (b for b in _toml_blocks() if "layers" in b.get("system", {}))
    (economics,) = (b for b in _toml_blocks() if "economics" in b)
    data = {
        **layers,
        **economics,
        "data": {"dataset": "phishing", "samples": 5},
        "threat": [{"preset": "label-only", "attacks": ["feature-edit"]}],
    }
    campaign = parse(data, tmp_path).campaign
    assert campaign.economics is not None and campaign.economics.damage == 40.0
    assert dict(campaign.economics.expertise)["high"] == 20000.0
    assert campaign.system.name.endswith("(layered)")
