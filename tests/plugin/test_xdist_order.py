"""Issue 18: under ``-n 2`` (``--dist statemigrate`` by default) every worker runs its tests in
collection order, as with plain ``-n 2``, so a test that mutates a shared value never runs
before a test collected earlier on the same worker."""

from __future__ import annotations

import pytest

from tests.conftest import Suite

pytestmark = pytest.mark.timeout(300)

INI = """[pytest]
filterwarnings = error
statemigrate_fixtures = data extra_*
"""

CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def data():
    return {"value": 0}

@pytest.fixture(scope="session")
def extra_1():
    return 1

@pytest.fixture(scope="session")
def extra_2():
    return 2
"""

READERS = "".join(f"def test_reads_{i}(data):\n    assert data['value'] == 0\n" for i in range(6))

# Collected last, and it mutates the live session value. It uses two more managed values, so
# its unit is the longest: the scheduler of the landed code handed it out first, and its
# worker then took the readers' unit too, to run after it.
MUTATOR = """
def test_mutates_last(data, extra_1, extra_2):
    data["value"] = 1
"""


@pytest.fixture
def project(suite: Suite) -> Suite:
    suite.pytester.makeini(INI)
    suite.pytester.makeconftest(CONFTEST)
    suite.pytester.makepyfile(test_a_readers=READERS, test_z_mutator=MUTATOR)
    return suite


def test_a_test_that_mutates_a_session_value_runs_after_the_readers(project: Suite) -> None:
    plain = project.plain("-n", "2")
    assert set(plain.outcomes.values()) == {"passed"}, plain.text
    cold = project.run("-n", "2", "-v")  # no ESG: planned from the workers' closures
    assert "scheduling tests via AffinityScheduling" in cold.text, cold.text
    assert cold.outcomes == plain.outcomes, cold.text
    warm = project.run("-n", "2")  # planned from the ESG the cold run recorded
    assert warm.outcomes == plain.outcomes, warm.text
