"""Fixtures that build files, as real suites do: a SQLite database image, a generated dataset
directory, a git repository. Each costs what its real counterpart costs to build here."""

from __future__ import annotations

import csv
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database image: 300,000 rows, two indexes, analysed."""
    path = tmp_path_factory.mktemp("db") / "shop.sqlite"
    rng = random.Random(7)
    con = sqlite3.connect(path)
    con.execute("create table orders (id integer primary key, customer int, item text, qty int)")
    con.executemany(
        "insert into orders (customer, item, qty) values (?, ?, ?)",
        (
            (rng.randrange(5000), f"item-{rng.randrange(800)}", rng.randrange(1, 9))
            for _ in range(300_000)
        ),
    )
    con.execute("create index by_customer on orders (customer)")
    con.execute("create index by_item on orders (item)")
    con.execute("analyze")
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset directory: 12 CSV shards and a manifest."""
    root = tmp_path_factory.mktemp("dataset")
    rng = random.Random(11)
    (root / "shards").mkdir()
    names = []
    for shard in range(12):
        name = f"shards/part-{shard:02d}.csv"
        with open(root / name, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["x", "y", "label"])
            for _ in range(15_000):
                x, y = rng.gauss(0, 1), rng.gauss(0, 1)
                writer.writerow([f"{x:.6f}", f"{y:.6f}", int(x * y > 0)])
        names.append(name)
    (root / "MANIFEST").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with history: 30 commits."""
    root = tmp_path_factory.mktemp("repo")
    env = {
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@x",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@x",
        "GIT_AUTHOR_DATE": "2020-01-01T00:00:00",
        "GIT_COMMITTER_DATE": "2020-01-01T00:00:00",
        "HOME": str(root),
        "PATH": "/usr/bin:/bin",
    }

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    for i in range(30):
        (root / f"file{i % 5}.txt").write_text(f"version {i}\n")
        git("add", "-A")
        git("commit", "-q", "-m", f"change {i}")
    return root
