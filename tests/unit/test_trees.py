"""trees.py: capturing, restoring and placing the files a fixture builds."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from pytest_statemigrate import codec, trees


class Factory:
    """What ``tmp_path_factory`` offers a fixture: ``mktemp`` under one base directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count: dict[str, int] = {}

    def getbasetemp(self) -> Path:
        return self.base

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        if numbered:
            n = self.count.get(basename, 0)
            self.count[basename] = n + 1
            basename = f"{basename}{n}"
        path = self.base / basename
        path.mkdir(mode=0o700)
        return path


def _build(factory: Factory) -> trees.Capture:
    cap = trees.Capture(factory)
    with cap.watching():
        d = factory.mktemp("data")
        (d / "a.txt").write_text("alpha")
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(b"\x00\x01" * 500)
        (d / "sub" / "copy.bin").write_bytes(b"\x00\x01" * 500)
        (d / "tool").write_text("#!/bin/sh\n")
        (d / "tool").chmod(0o750)
        os.symlink("a.txt", d / "rel")
        os.symlink(d / "sub", d / "abs")
        os.link(d / "a.txt", d / "hard")
        (d / "ro").mkdir()
        (d / "ro" / "f").write_text("f")
        (d / "ro").chmod(0o500)
    return cap


def _contents(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for rel, st in trees._walk(str(root)):
        full = root / rel
        if full.is_symlink():
            out[rel] = ("l", os.readlink(full).replace(str(root), "<root>"))
        elif full.is_dir():
            out[rel] = ("d", oct(st.st_mode & 0o7777))
        else:
            out[rel] = ("f", oct(st.st_mode & 0o7777), full.read_bytes(), st.st_nlink)
    return out


def test_a_tree_comes_back_as_it_was_built(tmp_path: Path) -> None:
    built = Factory(tmp_path / "one")
    built.base.mkdir()
    cap = _build(built)
    tree = trees.capture(cap, exclude=(), max_bytes=2**20)
    assert len(tree.blobs) == 4  # "alpha", the two equal .bin files once, the script, ro/f
    again = Factory(tmp_path / "two")
    again.base.mkdir()
    made = trees.restore(tree.manifest, tree.blobs, again)
    assert [m.path for m in made] == [str(again.base / "data0")]
    assert _contents(Path(made[0].path)) == _contents(Path(cap.made[0].path))
    assert os.path.samefile(Path(made[0].path) / "a.txt", Path(made[0].path) / "hard")
    assert trees.content_digest(made) == tree.digest == trees.content_digest(cap.made)
    (Path(made[0].path) / "a.txt").write_text("changed")
    assert trees.content_digest(made) != tree.digest
    assert (Path(cap.made[0].path) / "a.txt").read_text() == "alpha"  # a copy of its own


def test_the_metadata_print_tells_a_change_and_is_racy_at_first(tmp_path: Path) -> None:
    factory = Factory(tmp_path)
    cap = _build(factory)
    assert trees.stat_print(cap.made) == "racy"  # written just now
    owned = trees.Owned(cap.made, trees.content_digest(cap.made))
    assert owned.digest_now() == owned.digest  # read, then its metadata trusted
    time.sleep(trees.RACY_NS / 1e9)
    owned.stat = trees.stat_print(cap.made)
    assert owned.stat not in ("racy", "gone")
    assert owned.digest_now() == owned.digest
    (Path(cap.made[0].path) / "a.txt").write_text("same size")
    assert owned.digest_now() != owned.digest


def test_writes_outside_the_directories_are_side_effects(tmp_path: Path) -> None:
    cap = trees.Capture(Factory(tmp_path))
    cap.made.append(trees.Made(str(tmp_path / "data0"), "data", True))
    (tmp_path / "data0").mkdir()
    stray = tmp_path / "stray"
    stray.write_text("x")
    cap.written |= {str(stray), str(tmp_path / "data0" / "in"), str(tmp_path / "gone")}
    assert "writes " + str(stray) in str(trees.side_effect(cap, ()))
    assert trees.side_effect(cap, (str(stray),)) is None  # an excluded directory
    cap.written.clear()
    cap.removed.add(str(tmp_path / "elsewhere"))
    assert "deletes" in str(trees.side_effect(cap, ()))
    cap.written.add(str(tmp_path / "elsewhere"))  # its own scratch file
    assert trees.side_effect(cap, ()) is None
    cap.removed.clear()
    cap.written = {str(Path.home() / ".cache" / "lib" / "x"), "/x/__pycache__/m.pyc"}
    assert trees.side_effect(cap, ()) is None


def test_an_open_file_and_a_fifo_are_refused(tmp_path: Path) -> None:
    factory = Factory(tmp_path)
    cap = trees.Capture(factory)
    with cap.watching():
        d = factory.mktemp("k")
    with open(d / "log", "w"), pytest.raises(trees.Refused, match=r"keeps .*log open"):
        trees.capture(cap, (), 2**20)
    os.mkfifo(d / "pipe")
    with pytest.raises(trees.Refused, match="special file"):
        trees.capture(cap, (), 2**20)


def _paths(tmp_path: Path) -> tuple[trees.PathMap, str]:
    base = tmp_path / "pytest-7"
    (base / "data0").mkdir(parents=True)
    (base / "data10").mkdir()
    paths = trees.PathMap()
    paths.add(
        "k1",
        [
            trees.Made(str(base / "data0"), "data", True),
            trees.Made(str(base / "data10"), "data", True),
        ],
        str(base),
    )
    return paths, str(base)


def test_paths_and_strings_are_pickled_relative_to_their_directory(tmp_path: Path) -> None:
    paths, base = _paths(tmp_path)
    value = {
        "p": Path(base) / "data0" / "x.csv",
        "pure": PurePosixPath(base) / "data10",
        "url": f"sqlite:///{base}/data10/db.sqlite?x={base}/data0",
        "other": "unrelated",
    }
    frames = codec.dump(value, {}, paths=paths)
    assert base.encode() not in bytes(memoryview(frames[0]))
    # Loaded in a session whose copies lie elsewhere.
    there = trees.PathMap()
    there.add(
        "k1",
        [
            trees.Made("/elsewhere/data3", "data", True),
            trees.Made("/elsewhere/data4", "data", True),
        ],
        "/elsewhere",
    )
    loaded = codec.load(frames, {}.__getitem__, there)
    assert loaded == {
        "p": Path("/elsewhere/data3/x.csv"),
        "pure": PurePosixPath("/elsewhere/data4"),
        "url": "sqlite:////elsewhere/data4/db.sqlite?x=/elsewhere/data3",
        "other": "unrelated",
    }
    assert type(loaded["pure"]) is PurePosixPath
    with pytest.raises(trees.Unplaced):  # a session that has no copy of them
        codec.load(frames, {}.__getitem__, trees.PathMap())
    renamed = trees.PathMap()
    renamed.add("k1", [trees.Made("/e/other0", "other", True)] * 2, "/e")
    with pytest.raises(trees.Unplaced):  # made by mktemp calls in another order
        codec.load(frames, {}.__getitem__, renamed)


def test_a_path_no_build_made_is_refused(tmp_path: Path) -> None:
    paths, base = _paths(tmp_path)
    for value, why in [
        (Path(base) / "mine", "not in a directory its build made"),
        (f"{base}/mine/x", "not in a directory its build made"),
        (f"{base}/data0 and {base}/mine", "not in a directory its build made"),
        (f"{base}/data0".encode(), "in bytes"),
    ]:
        with pytest.raises(codec.Unpicklable, match=why):
            codec.dump([value], {}, paths=paths)
    # Outside the session's temporary directory, paths are values like any other.
    frames = codec.dump([Path("/etc/hosts")], {}, paths=paths)
    assert codec.load(frames, {}.__getitem__, paths) == [Path("/etc/hosts")]


def test_placed_digests_are_equal_across_copies(tmp_path: Path) -> None:
    paths, base = _paths(tmp_path)
    there = trees.PathMap()
    there.add(
        "k1",
        [trees.Made("/e/data5", "data", True), trees.Made("/e/data6", "data", True)],
        "/e",
    )
    here = {"p": Path(base) / "data0" / "f"}
    assert codec.placed_digest(here, paths) == codec.placed_digest({"p": Path("/e/data5/f")}, there)
    assert codec.placed_digest(here, paths) != codec.placed_digest({"p": Path("/e/data6/f")}, there)
