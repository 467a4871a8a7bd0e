"""The example suite's fixtures, cached with pytest-fixture-cache 0.1.0.

How the suite is adapted to what that plugin can do:

* it caches only ``dict`` values, as JSON, in SQLite: each expensive fixture gets a cached
  companion (``_corpus_data``...) that returns a JSON-able dict, and the public fixture turns
  it back into the suite's types (list, Counter, BigramModel, array); binary arrays travel as
  base64 text;
* its cache key is the fixture's name only (no params, no code): the parametrized ``table``
  becomes one cached companion per param (``_table_1``, ``_table_2``, ``_table_3``);
* the documented decorator order (``@cached_fixture`` above ``@pytest.fixture``) makes
  pytest 9 warn "cannot discover fixture ... wrapped in decorators" and drop the fixture, so
  ``@pytest.fixture`` goes outermost;
* a cached companion's own dependencies are set up even on a hit, so companions depend on
  companions only (a hit never builds the corpus);
* ``model`` is rebuilt around this session's live corpus (the suite asserts identity).
"""

from __future__ import annotations

import base64
import random
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import textstats
from pytest_fixture_cache import cached_fixture

HERE = Path(__file__).parent


def _b64(data: array) -> str:  # type: ignore[type-arg]
    return base64.b64encode(data.tobytes()).decode("ascii")


def _unb64(typecode: str, text: str) -> array:  # type: ignore[type-arg]
    out = array(typecode)
    out.frombytes(base64.b64decode(text))
    return out


@pytest.fixture(scope="session")
@cached_fixture
def _corpus_data() -> dict[str, Any]:
    rng = random.Random(1234)
    words = (HERE / "words.txt").read_text().split()
    return {"sentences": [" ".join(rng.choices(words, k=12)) for _ in range(150_000)]}


@pytest.fixture(scope="session")
@cached_fixture
def _vocabulary_data(_corpus_data: dict[str, Any]) -> dict[str, Any]:
    return {"counts": dict(textstats.count_words(_corpus_data["sentences"]))}


@pytest.fixture(scope="session")
@cached_fixture
def _model_data(_corpus_data: dict[str, Any], _vocabulary_data: dict[str, Any]) -> dict[str, Any]:
    fitted = textstats.BigramModel.fit(
        _corpus_data["sentences"], Counter(_vocabulary_data["counts"])
    )
    return {"index": fitted.index, "counts": _b64(fitted.counts), "total": fitted.total}


def _table_data(seed: int) -> dict[str, Any]:
    return {
        "ends": _b64(
            textstats.random_walks(
                seed=seed, walks=textstats.WALKS_PER_STEP * seed, steps=textstats.STEPS
            )
        )
    }


@pytest.fixture(scope="module")
@cached_fixture
def _table_1() -> dict[str, Any]:
    return _table_data(1)


@pytest.fixture(scope="module")
@cached_fixture
def _table_2() -> dict[str, Any]:
    return _table_data(2)


@pytest.fixture(scope="module")
@cached_fixture
def _table_3() -> dict[str, Any]:
    return _table_data(3)


@pytest.fixture(scope="session")
def corpus(_corpus_data: dict[str, Any]) -> list[str]:
    return _corpus_data["sentences"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def vocabulary(_vocabulary_data: dict[str, Any]) -> Counter[str]:
    return Counter(_vocabulary_data["counts"])


@pytest.fixture(scope="session")
def model(corpus: list[str], _model_data: dict[str, Any]) -> textstats.BigramModel:
    return textstats.BigramModel(
        corpus=corpus,
        index=_model_data["index"],
        counts=_unb64("I", _model_data["counts"]),
        total=_model_data["total"],
    )


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["short", "medium", "long"])
def table(request: pytest.FixtureRequest) -> array[float]:
    data = request.getfixturevalue(f"_table_{request.param}")
    return _unb64("d", data["ends"])
