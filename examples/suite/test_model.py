from __future__ import annotations

import pytest


def test_model_refers_to_the_corpus(model, corpus) -> None:  # type: ignore[no-untyped-def]
    # The loaded model refers to the very corpus object this session's corpus fixture gave.
    assert model.corpus is corpus


def test_probabilities_are_fractions(model, corpus) -> None:  # type: ignore[no-untyped-def]
    first, second = corpus[0].split()[:2]
    assert 0 < model.probability(first, second) < 1


@pytest.mark.parametrize("n", range(10))
def test_walks_stay_near_the_origin(table, n: int) -> None:  # type: ignore[no-untyped-def]
    assert abs(table[n]) < 30


def test_table_size(table) -> None:  # type: ignore[no-untyped-def]
    import textstats

    assert len(table) % textstats.WALKS_PER_STEP == 0
