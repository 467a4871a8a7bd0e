from __future__ import annotations

import pytest


def test_model_refers_to_the_corpus(model, corpus) -> None:  # type: ignore[no-untyped-def]
    # The loaded model refers to the very corpus object this session's corpus fixture gave.
    assert model.corpus is corpus


def test_probabilities_are_fractions(model, corpus) -> None:  # type: ignore[no-untyped-def]
    first, second = corpus[0].split()[:2]
    assert 0 < model.probability(first, second) < 1


@pytest.mark.parametrize("n", range(10))
def test_table_rows(table, n: int) -> None:  # type: ignore[no-untyped-def]
    assert table[n][0] == n


def test_table_is_long(table) -> None:  # type: ignore[no-untyped-def]
    assert len(table) % 100_000 == 0
