"""Git provenance against real repositories made with ``git init`` in a temporary folder."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from prefect_mltrain import git as gitmod
from prefect_mltrain.git import git_provenance, strip_url_credentials

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command line"),
]


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch, tmp_path):
    """Keep the user's git config out, and stop git's repository search at tmp_path."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.com")


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A repository with one commit on ``main``, a token-bearing origin, and a subfolder."""
    root = tmp_path / "repo"
    (root / "proj").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("*.log\n")
    (root / "proj" / "train.py").write_text("print('hello')\n")
    (root / "proj" / "weights.bin").write_bytes(bytes(range(256)))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    git(root, "remote", "add", "origin", "https://alice:s3cret@github.com/org/repo.git")
    return root


def test_clean_repository(repo):
    info = git_provenance(repo / "proj")

    assert info == {
        "repository": "https://github.com/org/repo.git",
        "branch": "main",
        "commit": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
        "diff": "",
        "diff_truncated": False,
        "untracked": [],
    }
    assert "s3cret" not in repr(info)


def test_dirty_repository_records_staged_and_unstaged_changes(repo):
    (repo / "proj" / "train.py").write_text("print('hello, world')\n")
    (repo / "proj" / "new.py").write_text("x = 1\n")
    git(repo, "add", "proj/new.py")  # staged only
    (repo / "proj" / "weights.bin").write_bytes(bytes(range(255, -1, -1)))

    info = git_provenance(repo / "proj")

    assert info["dirty"] is True
    assert info["diff_truncated"] is False
    diff = info["diff"]
    assert "-print('hello')" in diff and "+print('hello, world')" in diff
    assert "+x = 1" in diff
    assert "Binary files a/proj/weights.bin and b/proj/weights.bin differ" in diff
    assert info["untracked"] == []


def test_untracked_files_are_listed_and_make_the_tree_dirty(repo):
    (repo / "proj" / "notes.txt").write_text("todo\n")
    (repo / "proj" / "debug.log").write_text("ignored\n")

    info = git_provenance(repo / "proj")

    assert info["untracked"] == ["proj/notes.txt"]  # relative to the root; ignored files left out
    assert info["dirty"] is True
    assert info["diff"] == ""


def test_detached_head_has_no_branch(repo):
    first = git(repo, "rev-parse", "HEAD")
    (repo / "proj" / "train.py").write_text("print('second')\n")
    git(repo, "commit", "-q", "-am", "second")
    git(repo, "checkout", "-q", "--detach", first)

    info = git_provenance(repo)

    assert info["branch"] is None
    assert info["commit"] == first
    assert info["dirty"] is False


def test_large_diff_is_truncated_at_one_mebibyte(repo, monkeypatch):
    assert gitmod.MAX_DIFF_BYTES == 1024 * 1024
    monkeypatch.setattr(gitmod, "MAX_DIFF_BYTES", 4096)
    (repo / "proj" / "train.py").write_text("".join(f"line {i}\n" for i in range(5000)))

    info = git_provenance(repo)

    assert info["diff_truncated"] is True
    assert 0 < len(info["diff"].encode()) <= 4096
    assert info["diff"].endswith("\n")


def test_untracked_list_is_capped(repo, monkeypatch):
    assert gitmod.MAX_UNTRACKED == 1000
    monkeypatch.setattr(gitmod, "MAX_UNTRACKED", 5)
    for i in range(12):
        (repo / f"u{i:02}.txt").write_text("x")

    assert len(git_provenance(repo)["untracked"]) == 5


def test_repository_without_commits_gives_partial_data(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a.py").write_text("a = 1\n")
    git(root, "add", "a.py")
    (root / "b.py").write_text("b = 2\n")

    info = git_provenance(root)

    assert info["commit"] is None
    assert info["branch"] == "main"
    assert info["repository"] is None
    assert info["dirty"] is True
    assert "+a = 1" in info["diff"]
    assert info["untracked"] == ["b.py"]


def test_plain_folder_is_not_a_repository(tmp_path):
    folder = tmp_path / "plain" / "nested"
    folder.mkdir(parents=True)

    assert git_provenance(folder) is None
    assert git_provenance(tmp_path / "does-not-exist") is None


def test_git_missing_gives_none(repo, monkeypatch):
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))

    assert git_provenance(repo) is None


def test_hanging_git_is_stopped(repo, monkeypatch):
    fake = repo / "fake-bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.setattr(gitmod, "GIT_TIMEOUT_SECONDS", 0.5)

    assert git_provenance(repo) is None


def test_git_variables_of_an_enclosing_hook_are_ignored(repo, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))

    assert git_provenance(repo / "proj")["commit"] is not None


def test_upstream_remote_wins_over_origin(repo):
    git(repo, "remote", "add", "fork", "git@github.com:me/repo.git")
    git(repo, "config", "branch.main.remote", "fork")

    assert git_provenance(repo)["repository"] == "git@github.com:me/repo.git"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@host/org/repo.git", "https://host/org/repo.git"),
        ("https://token@host/org/repo.git", "https://host/org/repo.git"),
        ("https://x-access-token:ghs_abc@github.com:443/o/r", "https://github.com:443/o/r"),
        ("https://host/org/repo.git?private_token=abc#frag", "https://host/org/repo.git"),
        ("https://u:p@dev.azure.com/o/p/_git/r?sig=xyz", "https://dev.azure.com/o/p/_git/r"),
        ("http://user:p%40ss@host/repo", "http://host/repo"),
        ("https://host/org/repo.git", "https://host/org/repo.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("github.com:org/repo.git", "github.com:org/repo.git"),
        ("user:token@host:org/repo.git", "user@host:org/repo.git"),
        ("ssh://git@host:2222/org/repo.git", "ssh://git@host:2222/org/repo.git"),
        ("ssh://git:secret@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("git://host/org/repo.git", "git://host/org/repo.git"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("../sibling", "../sibling"),
    ],
)
def test_strip_url_credentials(url, expected):
    assert strip_url_credentials(url) == expected
