from __future__ import annotations

from collections import Counter

import pytest


def test_corpus_size(corpus: list[str]) -> None:
    assert len(corpus) == 150_000


def test_sentences_have_twelve_words(corpus: list[str]) -> None:
    assert all(len(s.split()) == 12 for s in corpus[:1000])


def test_vocabulary_counts_every_word(corpus: list[str], vocabulary: Counter[str]) -> None:
    assert sum(vocabulary.values()) == 12 * len(corpus)


def test_mutating_a_copy_is_private(corpus: list[str]) -> None:
    # Session-scoped: later tests in this run share this list, as in plain pytest.
    assert corpus[0] != "changed"


@pytest.mark.parametrize("word_index", range(10))
def test_common_words(vocabulary: Counter[str], word_index: int) -> None:
    _, count = vocabulary.most_common(10)[word_index]
    assert count > 100
