"""The GitHub settings as a new user meets them: `refinery daemon --once` started as a real process with a bad
repository name, API URL or token, against the local GitHub-speaking server. Each mistake stops with one line
naming the setting and its fix (no traceback), and the token never shows.

Run: .venv/bin/python -m pytest tests/test_github_settings.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import config
from tests.agent_support import TOKEN, env_for, gh, settings_for  # noqa: F401 - gh is a fixture


def once(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "daemon", "--once"], env=env, cwd=config.ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("repo", ["acme/lab/extra", "/", "acme/", "/lab", "acme/..", "acme lab/x"])
def test_a_malformed_repository_name_stops_start_up(gh, tmp_path, sqlite_url, repo):  # noqa: F811
    env = env_for(settings_for(sqlite_url, tmp_path, gh), REFINERY_GITHUB_REPO=repo)
    r = once(env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not r.stdout
    assert "github_repo" in r.stderr and "REFINERY_GITHUB_REPO=owner/name" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and TOKEN not in r.stderr
    assert gh.counted == 0  # refused before any request


def test_a_well_formed_repository_name_is_accepted(gh, tmp_path, sqlite_url):  # noqa: F811
    r = once(env_for(settings_for(sqlite_url, tmp_path, gh)))
    assert r.returncode == 0 and "polled github" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("url", ["not-a-url", "ftp://github.example/api/v3", "https://", "api.github.com"])
def test_a_bad_api_url_stops_start_up_in_one_line(gh, tmp_path, sqlite_url, url):  # noqa: F811
    r = once(env_for(settings_for(sqlite_url, tmp_path, gh), REFINERY_GITHUB_API_URL=url))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "github_api_url" in r.stderr and "REFINERY_GITHUB_API_URL=https://api.github.com" in r.stderr


def test_a_token_from_the_token_file_is_redacted_too(tmp_path, sqlite_url):
    """REFINERY_TOKEN_FILE is a documented way to give the token; one not shaped like ghp_... (an older 40-hex
    token) must be masked as surely as GITHUB_TOKEN's: here it is in an agent's done note, bound for a comment."""
    import json

    from tests.ghserver import GitHubServer

    hex_token = "0123456789abcdef" * 2 + "01234567"
    srv = GitHubServer(repo="acme/lab", token=hex_token).start()
    try:
        srv.add_collaborator("alice", "write")
        n = srv.create_issue("a tool", "add a flag", labels=["tools"], author="alice")
        token_file = tmp_path / "github-token"
        token_file.write_text(hex_token + "\n")
        env = env_for(settings_for(sqlite_url, tmp_path, srv), REFINERY_TOKEN_FILE=str(token_file))
        del env["GITHUB_TOKEN"]
        assert once(env).returncode == 0
        cli = [sys.executable, "-m", "agent", "queue"]
        claim = subprocess.run([*cli, "claim", "--lane", "agent", "--json"], env=env, cwd=config.ROOT,
                               capture_output=True, text=True, timeout=60)
        lease = json.loads(claim.stdout)["lease_id"]
        done = subprocess.run([*cli, "done", lease, "--note", f"tested with the token {hex_token}"], env=env,
                              cwd=config.ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        r = once(env)
        assert r.returncode == 0, r.stdout + r.stderr
        bodies = [c["body"] for c in srv.comments_of(n)]
        assert any("tested with the token [REDACTED]" in b for b in bodies), bodies
        assert not any(hex_token in b for b in bodies)
        assert hex_token not in r.stdout + r.stderr + claim.stdout + done.stdout + done.stderr
        db = Path(sqlite_url.split("sqlite:///", 1)[1])  # the note is stored masked too (runs/queue.db)
        assert not [f for f in db.parent.glob(db.name + "*") if hex_token.encode() in f.read_bytes()]
        # a finished agent item waits for a person's review (refinery:passed stays the gate's word)
        assert [x for x in srv.issues[n]["labels"] if x.startswith("refinery:")] == ["refinery:review"]
    finally:
        srv.stop()


@pytest.mark.parametrize("over, said", [
    ({"GITHUB_TOKEN": "ghp_" + "Wr0ngToken" * 4},
     "GitHub answered 401 to list issues: Bad credentials — check the token"),
    ({"REFINERY_GITHUB_REPO": "acme/elsewhere"}, "GitHub answered 404 to list issues: Not Found — check "
                                                 "REFINERY_GITHUB_REPO (acme/elsewhere)"),
])
def test_once_says_when_the_poll_failed_and_what_to_check(gh, tmp_path, sqlite_url, over, said):  # noqa: F811
    """A bad token or a repository that is not there is not "nothing new": --once says so on stdout, with the fix."""
    r = once(env_for(settings_for(sqlite_url, tmp_path, gh), **over))
    assert r.returncode == 0, r.stdout + r.stderr  # the documented --once contract: exits 0
    assert "nothing new" not in r.stdout and "the poll failed" in r.stdout and said in r.stdout, r.stdout
    assert "Traceback" not in r.stderr and TOKEN not in r.stdout + r.stderr
    assert over.get("GITHUB_TOKEN", TOKEN) not in r.stdout + r.stderr


def test_status_shows_no_rate_limit_before_github_ever_answered(tmp_path, sqlite_url):
    """GitHub unreachable from the start (a wrong port): `refinery status` has no rate limit to show, not -1/-1."""
    import json

    s = settings_for(sqlite_url, tmp_path, tracker="github", github_repo="acme/lab",
                     github_api_url="http://127.0.0.1:9/api/v3")
    env = env_for(s)
    r = once(env)
    assert r.returncode == 0 and "unreachable" in r.stdout, r.stdout + r.stderr
    st = subprocess.run([sys.executable, "-m", "agent", "status", "--json"], env=env, cwd=config.ROOT,
                        capture_output=True, text=True, timeout=60)
    assert json.loads(st.stdout)["tracker"]["rate"] is None, st.stdout
    text = subprocess.run([sys.executable, "-m", "agent", "status"], env=env, cwd=config.ROOT,
                          capture_output=True, text=True, timeout=60).stdout
    assert "-1/-1" not in text and "tracker: github acme/lab" in text, text


def test_bad_toml_is_reported_at_its_issue_body_line_only(gh, tmp_path, sqlite_url):  # noqa: F811
    """tomllib counts lines inside the ```toml block; the comment counts issue-body lines, and must not give both
    (it said "line 6: ... (at line 2, column 7)")."""
    n = gh.create_issue("bad toml", "An idea.\n\nMore words.\n\n```toml\nr_max = 3\n[model\n```\n",
                        labels=["ideas", "cpu"], author="alice")
    r = once(env_for(settings_for(sqlite_url, tmp_path, gh)))
    assert r.returncode == 0, r.stdout + r.stderr
    [body] = [c["body"] for c in gh.comments_of(n)]
    assert "line 7: toml: not valid TOML: Expected ']' at the end of a table declaration (column 7)" in body, body
    assert "at line" not in body and "refinery:invalid" in gh.issues[n]["labels"]
