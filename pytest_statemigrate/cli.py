"""The ``statemigrate`` command: run an agent, clear the store."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import DEFAULTS


def _clear(args: argparse.Namespace) -> int:
    if args.agent:
        from nodeagent.client import AgentClient, AgentError

        try:
            with AgentClient(args.agent, timeout=10.0) as client:
                removed = client.clear()
        except AgentError as exc:
            print(f"statemigrate clear: {exc}", file=sys.stderr)
            return 1
        print(f"cleared {removed} entries from the agent at {args.agent}")
        return 0
    store_dir = Path(args.dir)
    removed = 0
    for sub in ("agent-disk", *(["store"] if args.store is None else [])):
        path = store_dir / sub
        if path.exists():
            shutil.rmtree(path)
            removed += 1
    if args.store:
        path = Path(args.store)
        if path.exists():
            shutil.rmtree(path)
            removed += 1
    print(f"cleared the store in {store_dir}" + (f" and {args.store}" if args.store else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:
        from nodeagent.__main__ import main as agent_main

        return agent_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="statemigrate", description="pytest-statemigrate: managed fixture state"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("agent", help="run a node agent (same options as python -m nodeagent)")
    clear = sub.add_parser("clear", help="empty the store (and optionally a running agent)")
    clear.add_argument(
        "--dir", default=DEFAULTS["dir"], help="store directory (default %(default)s)"
    )
    clear.add_argument("--store", default=None, help="also remove this tier-3 store directory")
    clear.add_argument("--agent", default=None, help="clear the agent at this endpoint instead")
    args = parser.parse_args(argv)
    if args.command == "clear":
        return _clear(args)
    parser.error(f"unknown command {args.command}")  # argparse exits
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
