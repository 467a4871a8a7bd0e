"""``statemigrate_fixtures = auto``: which fixtures to manage, from what earlier runs measured.

Every run under ``auto`` records what each fixture's setups cost (as ``--sm-record`` does). A
fixture is managed from the next run on when the ESG shows it is worth it: its setups cost at
least ``statemigrate_auto_seconds`` per session, its value pickles, loading was not measured to
cost more than building, and no kept session refused it (a fixture refused once, say for a side
effect of its build, is not tried again while that session is kept). Pure: it takes what
``esg.ESGStore`` reads (:meth:`~esg.ESGStore.suggestions`, :meth:`~esg.ESGStore.managed_costs`,
:meth:`~esg.ESGStore.refusals`) and returns the decisions with their reasons, which the
summary and ``statemigrate suggest`` print.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .esg import ESGStore, Suggestion


@dataclass
class Decisions:
    """Fixture label → why it is managed; → why it is not (only those worth a word)."""

    manage: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    #: fixtures under the threshold, not named one by one
    cheap: int = 0

    def lines(self, threshold: float) -> list[str]:
        """The summary's lines: what ``auto`` manages, then each decline."""
        out = []
        if self.manage:
            shown = ", ".join(f"{_name(f)} ({why})" for f, why in self.manage.items())
            out.append(f"auto manages {shown}")
        for fixture, why in self.declined.items():
            out.append(f"auto declined {_name(fixture)}: {why}")
        if self.cheap:
            out.append(
                f"auto: {self.cheap} other fixture(s) take under {_s(threshold)} per session"
            )
        return out


def decide(
    suggestions: Iterable[Suggestion],
    managed: Mapping[str, tuple[float, float | None, int]],
    refused: Mapping[str, str],
    threshold: float,
) -> Decisions:
    """The decisions for the next run.

    :param suggestions: the unmanaged fixtures' setups over the kept sessions.
    :param managed: fixture → (build seconds, load seconds or None, elements) of the values
        stored for it (a fixture managed in earlier runs has no unmanaged setups to go by).
    :param refused: fixture → why a kept session refused it.
    :param threshold: the least setup seconds per session worth managing.
    """
    out = Decisions()
    for fixture, why in refused.items():
        out.declined[fixture] = f"refused in an earlier run: {why}"
    for fixture, (build, load, _) in sorted(managed.items(), key=lambda kv: -kv[1][0]):
        if fixture in out.declined:
            continue
        if load is not None and load >= build:
            out.declined[fixture] = f"loading took {_s(load)}, building {_s(build)}"
        elif build < threshold:
            out.cheap += 1
        else:
            out.manage[fixture] = f"~{_s(build)} of building per session"
    for s in suggestions:
        if s.fixture in out.declined or s.fixture in out.manage:
            continue
        per_session = s.seconds / s.sessions if s.sessions else 0.0
        if per_session < threshold:
            out.cheap += 1
        elif s.picklable is False:
            out.declined[s.fixture] = "its value does not pickle"
        elif s.saving_s <= 0:
            out.declined[s.fixture] = "loading would cost more than its setup"
        else:
            out.manage[s.fixture] = f"~{_s(per_session)} of setup per session"
    return out


def decide_from(path: Path, history: int, threshold: float) -> Decisions:
    """:func:`decide` on the ESG file at ``path``."""
    with ESGStore(path, history) as store:
        return decide(store.suggestions(), store.managed_costs(), store.refusals(), threshold)


def no_history_line() -> str:
    return (
        "auto: nothing recorded yet; this run records what each fixture's setups cost, and "
        "the next manages those worth it"
    )


def _name(label: str) -> str:
    return label.rsplit("::", 1)[-1]


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
