"""The example suite's fixtures, shared across xdist workers with the pytest-xdist recipe.

Recipe: pytest-xdist docs, "Making session-scoped fixtures execute only once": a session (or
module) fixture takes ``tmp_path_factory.getbasetemp().parent`` (the temp directory all
workers of one run share), holds a ``filelock.FileLock`` and builds the value into a file
there once; the other workers wait on the lock and read the file. Values are pickled (the
recipe uses JSON, which these values are not). Without xdist (``worker_id == "master"``) the
value is built directly, as in the recipe.

The builders are the example suite's own (same code, same cost). The model keeps a reference
to the corpus, so only its own fields go through the file and it is re-attached to this
worker's corpus (the suite asserts ``model.corpus is corpus``).
"""

from __future__ import annotations

import pickle
import random
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import textstats
from filelock import FileLock

HERE = Path(__file__).parent
T = TypeVar("T")


def _once(name: str, build: Callable[[], T], tmp_path_factory: Any, worker_id: str) -> T:
    if worker_id == "master":
        return build()
    root_tmp_dir = tmp_path_factory.getbasetemp().parent
    fn = root_tmp_dir / f"{name}.pickle"
    with FileLock(str(fn) + ".lock"):
        if fn.is_file():
            data: T = pickle.loads(fn.read_bytes())
        else:
            data = build()
            fn.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    return data


def _build_corpus() -> list[str]:
    rng = random.Random(1234)
    words = (HERE / "words.txt").read_text().split()
    return [" ".join(rng.choices(words, k=12)) for _ in range(150_000)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> list[str]:
    return _once("corpus", _build_corpus, tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def vocabulary(
    corpus: list[str], tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Counter[str]:
    return _once("vocabulary", lambda: textstats.count_words(corpus), tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def model(
    corpus: list[str],
    vocabulary: Counter[str],
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
) -> textstats.BigramModel:
    def build() -> tuple[dict[str, int], array, int]:  # type: ignore[type-arg]
        fitted = textstats.BigramModel.fit(corpus, vocabulary)
        return fitted.index, fitted.counts, fitted.total

    index, counts, total = _once("model", build, tmp_path_factory, worker_id)
    return textstats.BigramModel(corpus=corpus, index=index, counts=counts, total=total)


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["short", "medium", "long"])
def table(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> array[float]:
    def build() -> array[float]:
        return textstats.random_walks(
            seed=request.param,
            walks=textstats.WALKS_PER_STEP * request.param,
            steps=textstats.STEPS,
        )

    return _once(f"table-{request.param}", build, tmp_path_factory, worker_id)
