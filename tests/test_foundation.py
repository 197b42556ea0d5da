"""The foundation: config, tokenizer, CLI wiring.  Run: .venv/bin/python -m pytest tests/test_foundation.py"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

import config
from config import ROOT, ConfigError

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("REFINERY_") and k != "MODEL_ARCH"}


def refinery(*args, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**CLEAN_ENV, **(env or {})}, timeout=120)


def test_defaults_load_and_validate():
    s = config.load(CLEAN_ENV)
    assert s.model.arch == "refiner"
    assert s.source_of("preset") == "profile:cpu-tiny"
    assert s.dims == config.SIZE_PRESETS["tiny"]
    assert s.r_eval == s.model.r_mean


def test_env_override_records_source():
    s = config.load({**CLEAN_ENV, "MODEL_ARCH": "reasoner", "REFINERY_LR": "0.001"})
    assert s.model.arch == "reasoner" and s.source_of("arch") == "env:MODEL_ARCH"
    assert s.train.lr == 0.001 and s.source_of("lr") == "env:REFINERY_LR"


@pytest.mark.parametrize("env,field", [
    ({"REFINERY_LR": "3"}, "lr"),
    ({"MODEL_ARCH": "transformer"}, "arch"),
    ({"REFINERY_CPU_WORKERS": "many"}, "cpu_workers"),
    ({"REFINERY_N_REFINE": "4"}, "n_refine"),
    ({"REFINERY_HOME": "/srv/refinery"}, "home"),  # read by nothing: refused, not silently ignored
])
def test_bad_value_names_the_field(env, field):
    with pytest.raises(ConfigError) as e:
        config.load({**CLEAN_ENV, **env})
    assert e.value.problems[0].key == field


def test_unknown_key_suggests_the_near_one():
    with pytest.raises(ConfigError) as e:
        config.Settings().replace({"r_maxx": 3})
    assert 'did you mean "r_max"' in str(e.value)


def test_an_unsupported_queue_database_is_refused_without_showing_its_password():
    with pytest.raises(ConfigError) as e:
        config.load({**CLEAN_ENV, "REFINERY_DB_URL": "mysql://lab:hunter2@db/queue"})
    assert e.value.problems[0].key == "db_url" and "postgresql://" in str(e.value) and "hunter2" not in str(e.value)
    for ok in ("postgresql://lab@db/queue", "postgresql+psycopg://lab@db/queue", "sqlite:///q.db", "sqlite://"):
        assert config.load({**CLEAN_ENV, "REFINERY_DB_URL": ok}).queue.db_url == ok
    with pytest.raises(ConfigError, match="scheme 'missing'"):
        config.load({**CLEAN_ENV, "REFINERY_DB_URL": "runs/queue.db"})


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="r_min"):
        config.Settings().replace({"r_min": 5, "r_max": 3, "r_mean": 4})


def test_bfloat16_refused_below_sm80():
    with pytest.raises(ConfigError, match="bfloat16"):
        config.compute_dtype("cuda", (7, 5), "bfloat16")
    dtype, reason = config.compute_dtype("cuda", (7, 5), "auto")
    assert dtype == "float16" and "GradScaler" in reason
    assert config.compute_dtype("cuda", (8, 0), "bfloat16")[0] == "bfloat16"
    assert config.compute_dtype("cpu", None, "auto")[0] == "float32"


def test_field_names_are_unique_and_documented():
    for key, meta in config.FIELD_META.items():
        assert meta["help"], f"{key} has no comment"


def test_cli_config_bad_value_exits_nonzero_with_one_line():
    proc = refinery("config", env={"REFINERY_POLL_INTERVAL": "-5"})
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "poll_interval" in err[0]


def test_cli_config_prints_sources():
    proc = refinery("config", env={"REFINERY_LR": "0.002", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "env:REFINERY_LR" in proc.stdout


def test_cli_config_shows_each_fields_range():
    """README: `refinery config` lists every setting with its range — in the table where it fits, always in --json."""
    import json

    rows = {r["field"]: r for r in map(json.loads, refinery("config", "--json", env={"REFINERY_LR": "0.002"})
                                       .stdout.splitlines())}
    assert rows["lr"] == {"section": "train", "field": "lr", "value": 0.002, "range": "(0, 1]",
                          "source": "env:REFINERY_LR"}
    assert rows["poll_interval"]["range"] == "[1, 86400]" and rows["arch"]["range"] == "refiner|reasoner|stack"
    assert set(rows) >= set(config.FIELD_META) and rows["github token"]["value"] in ("set", "not set")
    wide = refinery("config", env={"COLUMNS": "140"}).stdout
    assert "range" in wide and "(0, 1]" in wide
    narrow = refinery("config", env={"COLUMNS": "80"}).stdout
    assert "(0, 1]" not in narrow and "ranges: a terminal of 110+ columns, or --json" in narrow
    assert max(map(len, narrow.splitlines())) <= 80


@pytest.mark.parametrize("url", ["postgresql://postgres:s3cret@127.0.0.1:1/x",
                                 "postgresql://127.0.0.1:1/x?user=postgres&password=s3cret"])
def test_a_password_in_the_db_url_is_never_printed(url):
    """`refinery config` (table and --json) and the unreachable-database error show REFINERY_DB_URL without its
    password, whether it sits in user:password@ or in a ?password= parameter (libpq reads both)."""
    env = {"REFINERY_DB_URL": url, "COLUMNS": "250"}
    table, js = refinery("config", env=env), refinery("config", "--json", env=env)
    assert table.returncode == 0 and js.returncode == 0, table.stderr + js.stderr
    assert "127.0.0.1:1/x" in table.stdout and "***" in table.stdout
    assert "s3cret" not in table.stdout + table.stderr + js.stdout + js.stderr
    status = refinery("status", env=env)
    err = status.stderr.strip().splitlines()
    assert status.returncode == 2 and len(err) == 1 and "REFINERY_DB_URL" in err[0] and "***" in err[0], err
    assert "s3cret" not in status.stdout + status.stderr


def test_tokenizer_hello_world():
    from refiner_model import tokenizer

    assert tokenizer.encode("hello world") == [31373, 995]
    assert tokenizer.single_token(" a") == 257


def test_tokenizer_corrupt_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    """On a copy of the cache in tmp_path: the shared runs/cache is read by tests running beside this one."""
    from refiner_model import tokenizer

    good = tokenizer.ensure().read_bytes()
    monkeypatch.setattr(tokenizer, "CACHE_DIR", tmp_path / "tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    path = tokenizer._cache_file()
    path.parent.mkdir()
    path.write_bytes(good[:-100] + b"corrupted\n")
    assert not tokenizer._cache_ok(path)
    rebuilt = tokenizer.ensure()
    assert rebuilt == path and hashlib.sha256(rebuilt.read_bytes()).hexdigest() == tokenizer.R50K_SHA256


def test_python_m_agent_matches_console_script():
    proc = refinery("--help")
    assert proc.returncode == 0 and "refinery" in proc.stdout


def test_cli_output_into_a_closed_pipe_is_no_traceback():
    """`refinery config --json | head -1`: the reader goes away; refinery stops quietly with 141, as on SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "config", "--json"], cwd=ROOT, env=CLEAN_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before it writes a line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
