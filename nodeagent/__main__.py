"""``python -m nodeagent``: run one node agent until SHUTDOWN or its parent exits."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
from typing import Final

from nodeagent import units
from nodeagent.protocol import BindRefused, check_endpoint

#: Every default and its unit, in one place.
DEFAULTS: Final = {
    "ram_bytes": 2**30,  # 1 GiB: T1 budget; least recently used entries spill to disk
    "disk_bytes": 4 * 2**30,  # 4 GiB: T2 diskcache size_limit (always passed explicitly)
    "log_level": "WARNING",  # logging level name for the agent's stderr
}


def parse_size(text: str) -> int:
    """:func:`nodeagent.units.parse_size` for argparse: a bad size is one line from argparse."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid size: {exc} (e.g. 512M)") from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: use a number >= 0")
    return seconds


def _bandwidth(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid bandwidth {text!r}: use bytes/s > 0")
    return size


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"invalid pid {text!r}: use a positive integer")
    return pid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nodeagent",
        description="Hold storage tiers for pytest-statemigrate and serve them over zmq.",
    )
    parser.add_argument(
        "--bind",
        required=True,
        metavar="ENDPOINT",
        help="ipc://PATH or loopback tcp://127.0.0.1:PORT (PORT may be *); with --curve-dir "
        "also any tcp://HOST:PORT, e.g. tcp://0.0.0.0:5555",
    )
    parser.add_argument(
        "--curve-dir",
        metavar="DIR",
        help="serve CURVE with the keys in DIR (made by `statemigrate keys`): the agent's "
        "server.key_secret, and authorized/*.key, the public keys of the clients it accepts "
        "(SIGHUP rereads them); required for a non-loopback --bind. With client.key_secret "
        "and server.key there too, it reaches agents on other hosts (a ring of agents)",
    )
    parser.add_argument(
        "--ram-bytes",
        type=parse_size,
        default=DEFAULTS["ram_bytes"],
        metavar="SIZE",
        help="RAM tier budget (default 1G)",
    )
    disk = parser.add_mutually_exclusive_group(required=True)
    disk.add_argument("--disk-dir", metavar="DIR", help="directory of the disk tier")
    disk.add_argument("--no-disk", action="store_true", help="run without a disk tier")
    parser.add_argument(
        "--disk-bytes",
        type=parse_size,
        default=DEFAULTS["disk_bytes"],
        metavar="SIZE",
        help="disk tier size limit (default 4G)",
    )
    parser.add_argument(
        "--store",
        metavar="DIR|URL",
        help="persistent tier: a directory or an fsspec URL such as s3://bucket/prefix "
        "(credentials from the environment; see docs/store.md)",
    )
    slow = parser.add_argument_group(
        "slow-store simulation (benchmarks and tests; both off by default)",
        "Make the --store directory behave like a remote store, so that prefetching can be "
        "measured on one machine.",
    )
    slow.add_argument(
        "--store-latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="seconds added to every value read from the store",
    )
    slow.add_argument(
        "--store-bandwidth",
        type=_bandwidth,
        metavar="BYTES",
        help="cap on the store's read throughput in bytes/s, e.g. 200M",
    )
    parser.add_argument(
        "--parent-pid", type=_pid, metavar="PID", help="exit when this process is gone"
    )
    parser.add_argument(
        "--log-level",
        default=DEFAULTS["log_level"],
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="stderr log level (default WARNING)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run an agent; returns the exit status (2: usage error, refused bind, unusable store or
    disk tier)."""
    args = build_parser().parse_args(argv)
    # Everything this process creates (its ipc socket, disk tier, store files) is its user's
    # alone: other local users are not trusted (docs/security.md). A store shared by a team
    # gets its group access from a default ACL on its directory, which the umask leaves be.
    os.umask(0o077)
    try:
        check_endpoint(args.bind, curve=args.curve_dir is not None)
    except BindRefused as exc:
        fix = (
            ": create keys with `statemigrate keys DIR` and pass --curve-dir DIR"
            if exc.needs_keys
            else ""
        )
        print(f"nodeagent: error: {exc}{fix}", file=sys.stderr, flush=True)
        return 2
    curve = peer_keys = None
    if args.curve_dir is not None:
        from nodeagent.curve import CLIENT, SECRET_SUFFIX, ClientKeys, KeysError, ServerKeys

        try:
            curve = ServerKeys.load(args.curve_dir)
            # Its peers on other hosts (a ring of agents) accept it as a client: with the
            # client keys of the same set, when the directory holds them.
            if os.path.exists(os.path.join(args.curve_dir, CLIENT + SECRET_SUFFIX)):
                peer_keys = ClientKeys.load(args.curve_dir)
        except KeysError as exc:
            print(f"nodeagent: error: --curve-dir: {exc}", file=sys.stderr, flush=True)
            return 2
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="nodeagent[%(process)d] %(levelname)s %(message)s",
    )

    import zmq

    from nodeagent.leases import LeaseTable
    from nodeagent.private import LocalAuthError
    from nodeagent.server import AgentServer
    from nodeagent.storeurl import StoreError
    from nodeagent.tiers import DiskTier, RamTier, StoreTier, TieredStore

    store = None
    if args.store is not None:
        try:
            store = StoreTier(args.store, args.store_latency, args.store_bandwidth)
        except StoreError as exc:
            print(f"nodeagent: error: {exc}", file=sys.stderr, flush=True)
            return 2
    try:
        disk = None if args.no_disk else DiskTier(args.disk_dir, args.disk_bytes)
    except (OSError, sqlite3.Error) as exc:  # a full disk, a locked or unreadable database
        print(
            f"nodeagent: error: cannot open the disk tier {args.disk_dir}: {exc} (free space "
            "there, or pass another --disk-dir)",
            file=sys.stderr,
            flush=True,
        )
        return 2
    if disk is not None and disk.notice:  # its database was not one: moved aside, one line
        logging.getLogger("nodeagent").warning("%s", disk.notice)
    tiers = TieredStore(RamTier(args.ram_bytes), disk, store)
    server = AgentServer(
        args.bind,
        tiers,
        LeaseTable(),
        parent_pid=args.parent_pid,
        curve=curve,
        peer_keys=peer_keys,
    )
    # SIGTERM (a launcher stopping an agent it never waited for) ends the loop like Ctrl-C,
    # so the tiers are closed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    if curve is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: server.reload_keys())
    try:
        try:
            endpoint = server.bind()
        except (zmq.ZMQError, LocalAuthError) as exc:
            print(f"nodeagent: error: cannot bind {args.bind}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"nodeagent ready {endpoint}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            return 130
    finally:
        server.close()
        tiers.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    code = main()
    # The tiers are closed and the socket is gone: skip the interpreter's teardown, which
    # the process waiting for this agent to exit would otherwise sit through (~50 ms).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
