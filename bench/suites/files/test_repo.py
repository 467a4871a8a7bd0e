import subprocess


def git(repo, *args):
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def test_history(repo):
    assert len(git(repo, "log", "--oneline").splitlines()) == 30


def test_file_at_head(repo):
    assert (repo / "file4.txt").read_text() == "version 29\n"


def test_blame(repo):
    assert "change 25" in git(repo, "log", "-1", "--format=%s", "--", "file0.txt")
