"""The ``state`` decorator and the spec it attaches to a fixture function.

Kept apart from ``__init__`` so that importing the public API stays free of pytest internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

ATTR: Final = "__statemigrate__"

F = TypeVar("F")


@dataclass(frozen=True)
class StateSpec:
    """What a managed fixture declares about its value.

    :param inputs: file globs, relative to the rootdir, whose contents the value depends on.
    :param env: names of environment variables the value depends on.
    """

    inputs: tuple[str, ...] = ()
    env: tuple[str, ...] = ()


#: How many functions carry a spec; lets the plugin skip all work when nothing is managed.
decorated_count = 0
#: Set by the plugin while nothing is selected: called on the next decoration, so the plugin
#: can register its fixture hooks then (``@state`` in a test module, applied at collection).
on_first_use: Callable[[], None] | None = None


def _names(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"statemigrate.state({what}=...) takes non-empty strings, got {item!r}")
    return items


def _attach(obj: Any, spec: StateSpec) -> None:
    # ``@pytest.fixture`` may already have wrapped the function (pytest >= 8.4 returns a
    # FixtureFunctionDefinition whose ``__wrapped__`` is the function pytest will call), so
    # the spec goes on every layer: whichever one pytest hands to the plugin carries it.
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        with contextlib.suppress(AttributeError, TypeError):
            setattr(obj, ATTR, spec)
        obj = getattr(obj, "__wrapped__", None)


@overload
def state(fn: F, /) -> F: ...


@overload
def state(
    *, inputs: str | Iterable[str] = (), env: str | Iterable[str] = ()
) -> Callable[[F], F]: ...


def state(
    fn: Any = None, /, *, inputs: str | Iterable[str] = (), env: str | Iterable[str] = ()
) -> Any:
    """Mark a fixture as managed: its value is built once and then served by a node agent.

    Use it bare (``@state``) or with the inputs the value depends on
    (``@state(inputs=["data/*.csv"], env=["SEED"])``), above or below ``@pytest.fixture``.
    """
    spec = StateSpec(inputs=_names(inputs, "inputs"), env=_names(env, "env"))

    def mark(obj: F) -> F:
        global decorated_count
        if not callable(obj):
            raise TypeError(f"statemigrate.state decorates a fixture function, got {obj!r}")
        _attach(obj, spec)
        decorated_count += 1
        if on_first_use is not None:
            on_first_use()
        return obj

    if fn is not None:
        return mark(fn)
    return mark


def spec_of(func: object) -> StateSpec | None:
    """The spec attached to ``func`` by :func:`state`, if any."""
    spec = getattr(func, ATTR, None)
    return spec if isinstance(spec, StateSpec) else None
