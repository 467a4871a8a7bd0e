"""Which fixtures can be managed, and the key material of one fixture value.

This is the one module besides plugin.py that reads pytest's fixture objects; it turns them
into plain data for :mod:`keys`. The rules (DESIGN.md, invariant 3, and docs/keys.md):

* only functions that return a value: yield and async fixtures are refused;
* a fixture read from ``request`` only what its key can see: ``param`` and friends; reading
  ``request.node`` (or ``function``, ``cls``, ``module``...) adds the requesting node's id to
  the key; anything else (``config``, ``getfixturevalue``, ``addfinalizer``...) is refused;
* every fixture it depends on is managed, or is a plain-return fixture of the project itself
  (below the rootdir), whose code then enters the key; a dependency on a fixture with side
  effects (``tmp_path``, ``monkeypatch``, any yield fixture, anything from pytest or a plugin)
  that is not managed is refused.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any, Final

from ._spec import StateSpec, spec_of
from .keys import Unkeyable, code_digest, param_token
from .keys import digest as combine
from .settings import name_matches
from .trees import is_factory

#: ``request`` attributes that cannot change a value beyond what the key holds already.
_REQUEST_PURE: Final = frozenset({"param", "param_index", "fixturename", "scope"})
#: ``request`` attributes that tie the value to the requesting node: its id enters the key.
_REQUEST_NODE: Final = frozenset(
    {"node", "function", "cls", "instance", "module", "path", "fspath", "keywords"}
)


@dataclass(frozen=True)
class Analysis:
    """What is statically known about one fixture definition."""

    name: str
    fixture_id: str  # "tests/conftest.py::dataset"-like: where it is defined
    code: str  # code digest
    own_code: CodeType | None
    spec: StateSpec | None
    refused: str | None  # why it cannot be managed, or None
    uses_node: bool = False


def unwrap(func: Any) -> Any:
    return inspect.unwrap(getattr(func, "__func__", func))


def is_selected(name: str, func: Any, patterns: Sequence[str], chosen: bool = False) -> bool:
    """Managed by opt-in: a name pattern matches, the function carries ``@state``, or
    ``auto`` ``chosen`` it.

    Patterns never select what pytest generates: the pseudo-fixtures of
    ``@pytest.mark.parametrize`` argument names and ``tmp_path_factory`` (the fixtures that
    use it are managed with their files), and (as with shell globs and dotfiles)
    names starting with ``_``, such as ``_xunit_setup_*`` and ``_unittest_setUpClass_*``,
    unless the pattern itself starts with ``_``.
    """
    if spec_of(func) is not None:
        return True
    if getattr(func, "__name__", None) == "get_direct_param_fixture_func":
        return False
    if not chosen and not name_matches(name, patterns):
        return False
    # The directories fixtures make with it are stored with their values.
    return not is_factory(name, unwrap(func))


def _request_use(func: Any) -> tuple[set[str], bool]:
    """Attributes read from a ``request`` parameter, and whether ``request`` escapes whole."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return set(), True
    attrs: set[str] = set()
    bare = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "request":
                attrs.add(node.attr)
        elif isinstance(node, ast.Name) and node.id == "request":
            bare += 1
    # Each ``request.attr`` holds one Name "request" (the parameter itself is an ast.arg):
    # any further Name means the request object itself is passed on or stored.
    escapes = bare > sum(
        1
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "request"
    )
    return attrs, escapes


def relative_path(filename: str, rootdir: Path) -> str | None:
    """``filename`` relative to the rootdir, with ``/``; None when it lies outside."""
    try:
        rel = os.path.relpath(filename, rootdir)
    except ValueError:
        return None
    return None if rel.startswith("..") else rel.replace(os.sep, "/")


def id_of(name: str, func: Any, rootdir: Path) -> str:
    """``"tests/conftest.py::dataset"``: where a fixture is defined, as stats and ESG elements
    name it."""
    raw = unwrap(func)
    code: CodeType | None = getattr(raw, "__code__", None)
    filename = code.co_filename if code is not None else "?"
    qualname = getattr(raw, "__qualname__", name)
    # A fixture made by a factory (``def _make(n): @pytest.fixture(name=n) def f(): ...``)
    # shares its function's code with its siblings: it is told apart by its name, and its key
    # also covers the factory's arguments (the closure).
    local = "<locals>" in qualname
    return f"{relative_path(filename, rootdir) or filename}::{name if local else qualname}"


def analyse(name: str, func: Any, argnames: Sequence[str], rootdir: Path) -> Analysis:
    """Static analysis of a fixture function selected for management."""
    raw = unwrap(func)
    spec = spec_of(func) or spec_of(raw)
    code: CodeType | None = getattr(raw, "__code__", None)
    filename = code.co_filename if code is not None else "?"
    rel = relative_path(filename, rootdir)
    fixture_id = id_of(name, func, rootdir)
    digest = code_digest(raw, rootdir)
    if getattr(raw, "__closure__", None):
        digest = combine(digest, closure_token(raw, rootdir))

    def refuse(why: str) -> Analysis:
        return Analysis(name, fixture_id, digest, code, spec, why)

    if rel is None and spec is None:
        return refuse(
            f"defined outside the rootdir, by {owner(raw)}: only the project's own fixtures "
            "can be managed"
        )
    if inspect.isgeneratorfunction(raw):
        return refuse("yield fixture: its teardown cannot run for a loaded value")
    if inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw):
        return refuse("async fixture: only plain functions that return a value can be managed")
    uses_node = False
    if "request" in argnames:
        attrs, escapes = _request_use(raw)
        if escapes:
            return refuse("passes `request` on, so its key cannot see what is read from it")
        other = attrs - _REQUEST_PURE - _REQUEST_NODE
        if other:
            first = sorted(other)[0]
            return refuse(f"uses request.{first}, which its key cannot see")
        uses_node = bool(attrs & _REQUEST_NODE)
    return Analysis(name, fixture_id, digest, code, spec, None, uses_node)


def closure_token(func: Any, rootdir: Path) -> str:
    """Key material for the variables a nested fixture function closes over: plain values
    canonically, functions by their code; other objects by type (their module's source is
    fingerprinted while the value is built)."""
    parts: list[str] = []
    names = getattr(getattr(func, "__code__", None), "co_freevars", ())
    for var, cell in zip(names, func.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            parts.append(f"{var}=<empty>")
            continue
        if inspect.isfunction(value):
            parts.append(f"{var}={code_digest(value, rootdir)}")
            continue
        try:
            parts.append(f"{var}={param_token(value)}")
        except Unkeyable:
            parts.append(f"{var}:{type(value).__module__}.{type(value).__qualname__}")
    return "|".join(parts)


def is_direct_param(func: Any) -> bool:
    """pytest's stand-in for a ``parametrize`` argument (``metafunc.parametrize("seed", ...)``
    in a test or a ``pytest_generate_tests``): its value is the param, nothing else."""
    return getattr(unwrap(func), "__name__", None) == "get_direct_param_fixture_func"


@functools.lru_cache(maxsize=64)
def _owner_of_module(module: str) -> str:
    top = module.partition(".")[0]
    if top in ("_pytest", "pytest", "py"):
        return "pytest"
    try:
        from importlib.metadata import packages_distributions

        dists = packages_distributions().get(top)
    except Exception:
        dists = None
    return dists[0] if dists else top or "a plugin"


def owner(func: Any) -> str:
    """Who defines a fixture outside the rootdir: ``pytest``, or the plugin's distribution."""
    return _owner_of_module(str(getattr(unwrap(func), "__module__", "") or ""))


def unmanaged_dependency_refusal(dep_name: str, func: Any, rootdir: Path) -> str | None:
    """Why a fixture that is not managed may not feed a managed one, or None if it may."""
    raw = unwrap(func)
    code = getattr(raw, "__code__", None)
    if is_direct_param(raw):
        return None  # its value is the param, which the dependent's key holds
    if code is None or relative_path(code.co_filename, rootdir) is None:
        return (
            f"depends on {dep_name}, a fixture of {owner(raw)} (not the project's): its value "
            "may come from side effects the key cannot see"
        )
    if inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw):
        return f"depends on {dep_name}, a yield fixture that is not managed"
    if "request" in inspect.signature(raw).parameters:
        attrs, escapes = _request_use(raw)
        if escapes or attrs - _REQUEST_PURE:
            return f"depends on {dep_name}, which reads `request` and is not managed"
    return None


_IMMUTABLE: Final = (int, float, complex, str, bytes, bool, tuple, frozenset, type(None), range)
_ATOMS: Final = (int, float, complex, str, bytes, bool, type(None))
_MEMBERS_SEARCHED: Final = 10_000  # members of one module-level list or dict looked through

#: :func:`identity_refusal`'s ``param`` when the fixture is not parametrized
NO_PARAM: Final[Any] = object()


def identity_refusal(func: Any, value: Any, param: Any = NO_PARAM) -> str | None:
    """Why a loaded copy may not stand in for ``value`` because others hold the very object,
    or None: it is the request's param object itself (tests may find it again by identity,
    as geopandas's do by ``id()``), or a module-level object (:func:`global_alias`)."""
    if param is not NO_PARAM and value is param and not isinstance(value, _ATOMS):
        return "returns its param object itself: a loaded copy would be another object"
    alias = global_alias(func, value)
    if alias is not None:
        return (
            f"returns the module-level object {alias}: a loaded value would skip what "
            "building does to it"
        )
    return None


def global_alias(func: Any, value: Any) -> str | None:
    """The module-level name (``STATE``, ``app.STATE`` or ``app.FRAMES[0]``) under which the
    fixture's code reaches the very object it returned, or None.

    Such a fixture works on shared state (say, it resets a registry and returns it): a loaded
    copy would skip what the build does to the real object. Members of a module-level list,
    tuple or dict count as well. Immutable values do not count.
    """
    if isinstance(value, _IMMUTABLE):
        return None
    raw = unwrap(func)
    code = getattr(raw, "__code__", None)
    namespace = getattr(raw, "__globals__", None)
    if code is None or not isinstance(namespace, dict):
        return None
    names = code.co_names
    for name in names:
        obj = namespace.get(name)
        found = _holding(obj, value, str(name))
        if found is not None:
            return found
        if inspect.ismodule(obj):
            for attr in names:
                found = _holding(getattr(obj, attr, None), value, f"{name}.{attr}")
                if found is not None:
                    return found
    return None


def _holding(obj: Any, value: Any, shown: str) -> str | None:
    """``shown`` when ``obj`` is ``value``, ``shown[i]`` when one of its first members is."""
    if obj is value:
        return shown
    if isinstance(obj, (list, tuple)):
        for index, member in enumerate(obj[:_MEMBERS_SEARCHED]):
            if member is value:
                return f"{shown}[{index}]"
    elif isinstance(obj, dict) and len(obj) <= _MEMBERS_SEARCHED:
        for key, member in obj.items():
            if member is value:
                return f"{shown}[{key!r}]"
    return None


def given_id(request: Any, fixturedef: Any) -> str | None:
    """The id the fixture's ``ids=`` gives this request's param, or None."""
    ids = getattr(fixturedef, "ids", None)
    if isinstance(ids, (list, tuple)):
        index = getattr(request, "param_index", 0)
        if 0 <= index < len(ids) and ids[index] is not None:
            return str(ids[index])
    elif callable(ids):
        try:
            made = ids(request.param)
        except Exception:
            return None
        return None if made is None else str(made)
    return None


def param_part(request: Any, fixturedef: Any) -> str | None:
    """The param token of this request, or None when the fixture is not parametrized."""
    if not hasattr(request, "param"):
        return None
    return param_token(request.param, given_id(request, fixturedef))


__all__ = [
    "NO_PARAM",
    "Analysis",
    "Unkeyable",
    "analyse",
    "given_id",
    "global_alias",
    "identity_refusal",
    "is_direct_param",
    "is_selected",
    "param_part",
    "relative_path",
    "unmanaged_dependency_refusal",
]
