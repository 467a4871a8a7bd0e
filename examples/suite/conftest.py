"""Expensive, deterministic state, as real suites build it: a generated corpus, an index parsed
from it, a model fitted to it, and a parametrized data table read from a data file."""

from __future__ import annotations

import random
from array import array
from collections import Counter
from pathlib import Path

import pytest
import textstats

from pytest_statemigrate import state

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """About 0.8 s: 150,000 pseudo-sentences from a seeded generator."""
    rng = random.Random(1234)
    words = (HERE / "words.txt").read_text().split()
    return [" ".join(rng.choices(words, k=12)) for _ in range(150_000)]


@pytest.fixture(scope="session")
def vocabulary(corpus: list[str]) -> Counter[str]:
    """About 0.5 s: word counts over the whole corpus."""
    return textstats.count_words(corpus)


@state
@pytest.fixture(scope="session")
def model(corpus: list[str], vocabulary: Counter[str]) -> textstats.BigramModel:
    """About 1 s: a bigram model fitted to the corpus; it keeps a reference to the corpus."""
    return textstats.BigramModel.fit(corpus, vocabulary)


@state(inputs=["words.txt"])
@pytest.fixture(scope="module", params=[1, 2, 3], ids=["short", "medium", "long"])
def table(request: pytest.FixtureRequest) -> array[float]:
    """About 0.4 s per step of the param: random walks, summarised in a compact array."""
    return textstats.random_walks(
        seed=request.param, walks=textstats.WALKS_PER_STEP * request.param, steps=textstats.STEPS
    )
