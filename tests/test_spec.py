"""The spec schema: effective spec or errors with line, key, message, suggestion.
Run: .venv/bin/python -m pytest tests/test_spec.py"""

from __future__ import annotations

import config
from experiments.spec import extract_toml_block, parse_spec, spec_from_issue

BASE = config.load({})


def test_empty_spec_is_the_defaults():
    r = parse_spec("", base=BASE)
    assert r.ok and r.errors == [] and r.prereg is None
    assert r.spec["arch"] == "refiner" and r.spec["khop_k"] == BASE.stages.khop_k
    assert r.spec["dims"] == BASE.dims


def test_flat_and_table_keys_fill_in_defaults():
    text = 'arch = "reasoner"\nlr = 0.001\n[stages]\nkhop_k = 3\ntasks = ["khop", "s5"]\n'
    r = parse_spec(text, base=BASE)
    assert r.ok, r.error_text()
    assert r.settings.model.arch == "reasoner" and r.settings.train.lr == 0.001
    assert r.spec["khop_k"] == 3 and r.spec["tasks"] == ["khop", "s5"]
    assert r.spec["r_max"] == BASE.model.r_max  # a default filled in
    assert r.settings.source_of("khop_k") == "spec line 4"
    assert r.given == {"arch": "reasoner", "lr": 0.001, "khop_k": 3, "tasks": ("khop", "s5")}


def test_unknown_key_suggests_the_field():
    r = parse_spec("r_mean = 4\nn_refine = 8\nr_maxx = 6\n", base=BASE)
    assert not r.ok
    by_key = {e.key: e for e in r.errors}
    assert by_key["n_refine"].line == 2 and by_key["n_refine"].suggestion == 'did you mean "r_max"?'
    assert by_key["r_maxx"].line == 3 and by_key["r_maxx"].suggestion == 'did you mean "r_max"?'
    assert "unknown key" in by_key["n_refine"].message


def test_out_of_range_and_type_errors_name_the_range():
    r = parse_spec("\n\nlr = 3\nbatch_size = 'big'\narch = 'refner'\n", base=BASE)
    by_key = {e.key: e for e in r.errors}
    assert by_key["lr"].line == 3 and "out of range (0, 1]" in by_key["lr"].message
    assert by_key["batch_size"].line == 4 and "not int" in by_key["batch_size"].message
    assert by_key["arch"].suggestion == 'did you mean "refiner"?'
    assert "line 3: lr: lr = 3.0 is out of range" in r.error_text()


def test_cross_field_rule_gets_its_line():
    r = parse_spec("[model]\nr_max = 2\nr_mean = 4\n", base=BASE)
    assert [(e.key, e.line) for e in r.errors] == [("r_mean", 3)]


def test_operator_settings_and_gate_are_off_limits():
    r = parse_spec('db_url = "sqlite:///x"\npass_delta_points = 1\n', base=BASE)
    keys = {e.key: e.message for e in r.errors}
    assert "may not change" in keys["db_url"] and "may not change" in keys["pass_delta_points"]


def test_wrong_table_and_bad_toml():
    r = parse_spec("[train]\nr_max = 3\n[modle]\nx = 1\n", base=BASE)
    msgs = {e.key: e for e in r.errors}
    assert "belongs to [model]" in msgs["r_max"].message and msgs["r_max"].line == 2
    assert msgs["[modle]"].suggestion == 'did you mean "model"?' and msgs["[modle]"].line == 3
    bad = parse_spec("lr = 0.1\nr_max = = 3\n", base=BASE)
    assert not bad.ok and bad.errors[0].line == 2 and bad.errors[0].key == "toml"


def test_prereg_table():
    text = ('[prereg]\nhypothesis = "the gate holds the answer"\nprimary_task = "khop"\nexpected_delta = 15\n'
            'kill_if = "delta < 5"\n')
    r = parse_spec(text, base=BASE)
    assert r.ok and r.prereg == {"hypothesis": "the gate holds the answer", "primary_task": "khop",
                                 "expected_delta": 15, "kill_if": "delta < 5"}
    bad = parse_spec('[prereg]\nhypothesis = "h"\nprimary_task = "kop"\nexpected_delta = "a lot"\nkill = "x"\n',
                     base=BASE)
    msgs = {e.key: e for e in bad.errors}
    assert msgs["prereg.primary_task"].suggestion == 'did you mean "khop"?'
    assert msgs["prereg.expected_delta"].line == 4
    assert msgs["prereg.kill"].suggestion == 'did you mean "kill_if"?'


def test_extract_block_from_issue_body_and_lines_are_body_lines():
    body = "Idea: loop more.\n\n```toml\nr_mean = 4\nlr = 7\n```\n\nmore text\n```toml\nlr = 9\n```\n"
    text, first = extract_toml_block(body)
    assert text == "r_mean = 4\nlr = 7\n" and first == 4
    r = spec_from_issue(body, base=BASE)
    assert [(e.key, e.line) for e in r.errors] == [("lr", 5)]
    assert extract_toml_block("no spec here") == (None, 0)
    assert spec_from_issue("no spec", base=BASE).ok
    assert extract_toml_block("~~~TOML\na = 1\n~~~")[0] == "a = 1\n"


def test_an_operator_table_is_refused_as_such_not_as_a_typo():
    """[gate] is a real section, just not a spec's: it said "unknown table — did you mean "stages"?"."""
    r = parse_spec("r_max = 6\n[gate]\nalpha = 0.5\n", base=BASE)
    [e] = r.errors
    assert e.key == "[gate]" and e.line == 2 and "may not change" in e.message and "stages" not in e.suggestion
    assert "REFINERY_" in e.suggestion
    assert parse_spec("[modle]\nx = 1\n", base=BASE).errors[0].message == "unknown table"
