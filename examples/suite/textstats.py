"""A small helper module the example fixtures call into (editing it rebuilds them)."""

from __future__ import annotations

import random
from array import array
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise


def count_words(corpus: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sentence in corpus:
        counts.update(sentence.split())
    return counts


@dataclass
class BigramModel:
    """Bigram counts over the vocabulary, in one flat array (row: first word)."""

    corpus: list[str]
    index: dict[str, int]
    counts: array  # type: ignore[type-arg]
    total: int

    @classmethod
    def fit(cls, corpus: list[str], vocabulary: Counter[str]) -> BigramModel:
        index = {word: i for i, word in enumerate(sorted(vocabulary))}
        n = len(index)
        counts = array("I", bytes(4 * n * n))
        for sentence in corpus:
            ids = [index[w] for w in sentence.split()]
            for a, b in pairwise(ids):
                counts[a * n + b] += 1
        return cls(corpus=corpus, index=index, counts=counts, total=sum(vocabulary.values()))

    def probability(self, first: str, second: str) -> float:
        n = len(self.index)
        return self.counts[self.index[first] * n + self.index[second]] / max(self.total, 1)


#: Walks per step of the ``table`` param (about 0.4 s of work each); shared with bench/.
WALKS_PER_STEP = 18_000
STEPS = 200


def random_walks(seed: int, walks: int, steps: int) -> array:  # type: ignore[type-arg]
    """The end point of each of ``walks`` seeded random walks of ``steps`` steps."""
    rng = random.Random(seed)
    ends = array("d")
    for _ in range(walks):
        position = 0.0
        for _ in range(steps):
            position += rng.random() - 0.5
        ends.append(position)
    return ends
