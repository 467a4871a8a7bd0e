"""Where tier 3 lives: a local directory, or an fsspec URL (``s3://bucket/prefix``, ...).

A location containing ``://`` (or an fsspec chain, ``simplecache::s3://...``) is a URL and is
opened with fsspec; anything else is a plain directory and never imports fsspec (DESIGN.md,
invariant 6: fsspec and its backends are imported only when a URL is configured).

Two checks, one cheap and one definitive, both failing with one line that names the location
and the fix:

- :func:`check_location` (pytest configure time, argparse): the protocol is known to fsspec and
  its backend package can be found, without importing the backend (s3fs alone takes ~0.8 s).
- :func:`open_fs` (agent start): builds the filesystem object, importing the backend.

Credentials and settings come from where the backend looks for them (for S3: the ``AWS_*``
environment variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` points it at an
S3-compatible server). Extra keyword arguments for the filesystem can be given as a JSON map in
``$STATEMIGRATE_STORE_OPTIONS`` (e.g. ``{"anon": true}``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["OPTIONS_ENV", "StoreError", "check_location", "is_url", "open_fs", "single_put"]

OPTIONS_ENV: Final = "STATEMIGRATE_STORE_OPTIONS"

#: Protocols whose stores write an object with one PUT that readers see whole or not at all,
#: and where a rename is a copy plus a delete. Writes to them are one ``pipe_file``; every
#: other filesystem (sftp, hdfs, smb, ...) gets a temporary file and a rename, like a local
#: directory. Rejected: a rename everywhere (on S3 it doubles the bytes moved and is not
#: atomic either).
_SINGLE_PUT: Final = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "memory"}
)


class StoreError(ValueError):
    """A store location that cannot be used; the message is one line naming it and the fix."""


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (else a local directory)."""
    return "://" in location or "::" in location


def _protocols(location: str) -> list[str]:
    """The protocol of each link of an fsspec URL chain: ``simplecache::s3://b`` → both."""
    out = []
    for link in location.split("::"):
        out.append(link.split("://", 1)[0] if "://" in link else link)
    return out


def _fsspec_protocols(location: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """fsspec's registered filesystem classes and its table of known implementations."""
    try:
        # fsspec.registry the attribute is the mapping; the module of the same name holds both
        from fsspec.registry import known_implementations, registry
    except ImportError:
        raise StoreError(
            f"store {location!r} is a URL, which needs fsspec, the url extra: "
            "pip install 'pytest-statemigrate[url]'"
        ) from None
    return registry, known_implementations


def _install_hint(package: str) -> str:
    extra = " (or pip install 'pytest-statemigrate[s3]')" if package == "s3fs" else ""
    return f"pip install {package}{extra}"


def check_location(location: str) -> str:
    """Check ``location`` cheaply: a directory always passes; a URL needs a protocol fsspec
    knows and, for a backend in its own package (s3fs, gcsfs, adlfs, ...), that package.

    Backends inside fsspec that need an optional library (sftp needs paramiko) pass here and
    fail at agent start, in :func:`open_fs`.

    :returns: ``location`` unchanged (for use as an argparse ``type``).
    :raises StoreError: naming the location and the fix.
    """
    if not location.strip():
        raise StoreError("store location is empty: give a directory or an fsspec URL")
    if not is_url(location):
        return location
    registered, known_implementations = _fsspec_protocols(location)
    for protocol in _protocols(location):
        if protocol in registered:
            continue  # its class is imported already
        known = known_implementations.get(protocol)
        if known is None:
            raise StoreError(
                f"store {location!r}: unknown protocol {protocol!r}; use a directory or an "
                "fsspec URL such as s3://bucket/prefix, gs://..., file:///path, memory://..."
            )
        package = str(known["class"]).split(".", 1)[0]
        if importlib.util.find_spec(package) is None:
            raise StoreError(
                f"store {location!r}: the {protocol}:// backend is not installed: "
                f"{_install_hint(package)}"
            )
    return location


def _options(location: str) -> dict[str, Any]:
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"store {location!r}: ${OPTIONS_ENV} is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise StoreError(f"store {location!r}: ${OPTIONS_ENV} must be a JSON object")
    return options


def open_fs(location: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of the URL ``location`` (backend imported).

    :raises StoreError: for an unknown protocol, a missing backend or bad options.
    """
    check_location(location)
    options = _options(location)
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(location, **options)
    except ImportError as exc:
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None)
        hint = f": {_install_hint(missing.split('.', 1)[0])}" if missing else ""
        raise StoreError(f"store {location!r}: {exc}{hint}") from None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"store {location!r}: {exc}") from None
    return fs, str(root)


def single_put(fs: Any) -> bool:
    """Whether ``fs`` is an object store: one PUT of a whole object is atomic for readers."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & _SINGLE_PUT)
