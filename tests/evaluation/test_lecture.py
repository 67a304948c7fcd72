"""The lecture's table, reduced: the seven defenses on the 8x8 digits, each audited against the
undefended model at the adversarial-training eps; the full MNIST run is
``benchmarks/lecture_table.py`` and its table is in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mallory.evaluation.audit.lecture import Scale, file_stem, lecture_table, table_markdown
from mallory.report.audit_model import FAILED, PASSED, STAGES
from mallory.zoo import load_dataset


@pytest.mark.slow
def test_the_lecture_table_reduced(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test").head(40)
    ended: list[str] = []
    rows = dict(
        lecture_table(
            train,
            test,
            eps=0.1,
            scale=Scale(train_eps=0.1, train_steps=5),
            settings={"steps": 20, "queries": 200, "draws": 5},
            checkpoints=tmp_path,
            done=lambda name, report: ended.append(name),
        )
    )
    # each audit is handed over as it ends and keeps its stages for a resumed run
    assert ended == list(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{file_stem(name)}.ckpt" for name in rows
    )
    assert file_stem("adversarial training, weak (FGSM)") == "adversarial-training-weak-FGSM"
    assert set(rows) == {
        "dropout",
        "weight decay",
        "cropping / foveation",
        "adversarial training, weak (FGSM)",
        "defensive distillation",
        "adversarial training, strong (PGD)",
        "randomized smoothing",
    }
    for report in rows.values():
        assert [s.number for s in report.stages] == [n for n, _, _ in STAGES]
        assert all(s.status in (PASSED, FAILED, "not measured") for s in report.stages)
    # regularizers never hold: dropout does nothing against adversarial examples, and the
    # little weight decay may do at a small eps does not survive the later stages
    assert rows["dropout"].failed_stage == 1, rows["dropout"].verdict
    assert rows["weight decay"].failed_stage is not None
    # cropping changes what a defense-unaware attacker gets, not what an adaptive one gets
    crop = rows["cropping / foveation"]
    assert crop.stage(3).status == FAILED
    # distillation never holds: the adaptive stage attacks its logits
    assert rows["defensive distillation"].stage(3).status == FAILED
    # strong adversarial training holds against the adaptive attacker at its own eps
    strong = rows["adversarial training, strong (PGD)"]
    assert strong.stage(1).status == PASSED and strong.stage(3).status == PASSED
    table = table_markdown(list(rows.items()))
    assert table.count("\n") == 2 + len(rows)
    assert "| dropout |" in table and "1. no effect" in table
