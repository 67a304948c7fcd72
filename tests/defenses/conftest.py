"""Small data for the defense tests: the digits (8x8) ship with scikit-learn."""

from __future__ import annotations

import pytest

from mallory.zoo import Dataset, load_dataset


@pytest.fixture(scope="session")
def digits_train() -> Dataset:
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_dataset("digits", "test")
