"""study/registry.py: one entry says what a method is; writers stamp it, readers read only it."""
import json
from pathlib import Path

import pytest

from study import registry

ROOT = Path(__file__).resolve().parents[2]


def test_parameters_make_the_name_and_the_words():
    g = registry.identity("scratch-int8-group", group_size=32)
    assert g["name"] == "scratch-int8-group32" and g["grouping"] == "per 32 inputs of a row"
    assert g["description"] == "Part 1 INT8, symmetric, one scale per 32 inputs of a row"
    t = registry.identity("bnb-int8", threshold=4.5)
    assert t["name"] == "bnb-int8-t4.5" and "outliers (>4.5)" in t["description"]
    assert registry.identity("bnb-int8")["name"] == "bnb-int8"                    # the default: no suffix
    sel = registry.identity("scratch-int8-per_channel", blocks=[0, 1, 2, 5], components=["qkv", "ffn_up"])
    assert sel["name"] == "scratch-int8-per_channel-b0-2.5-qkv+ffn_up"
    assert sel["label"] == "scratch-int8 (blocks 0-2.5)" and sel["selective"] == {"blocks": "0-2.5",
                                                                                 "components": "qkv+ffn_up"}
    with pytest.raises(registry.UnknownMethod, match="no method 'int3'"):
        registry.identity("int3")
    with pytest.raises(ValueError, match="group_size"):
        registry.identity("scratch-int8-group")


def test_every_committed_record_of_a_method_carries_the_identity_its_settings_give():
    """Each eval and sensitivity record in results/ holds method.identity, equal to what
    today's writer stamps for the settings it records, and named as the record is."""
    n = 0
    for path in sorted((ROOT / "results").rglob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("kind") not in ("eval", "sensitivity"):
            continue
        n += 1
        ident = registry.of(rec)
        assert ident == registry.identity_from_settings(rec), path.name
        assert ident["name"] == rec["method"]["name"].removesuffix("-sensitivity"), path.name
        assert ident["color"] == registry.FAMILIES[ident["family"]]
    assert n >= 40


def test_adding_a_method_is_one_entry(monkeypatch, tmp_path):
    """A new method (here a cast to bfloat16 under a new key) needs one registry entry: its
    record then goes through every reader, labelled and coloured from its stamp."""
    from conftest import record

    import plot_results as pr
    entry = registry.Method("baseline-bf16-cast", "baseline", "baseline", 16, None, "bfloat16, cast on load")
    monkeypatch.setitem(registry.METHODS, entry.key, entry)
    recs = [record("baseline-fp32", 20.0, 100.0), record("baseline-bf16-cast", 20.01, 50.0)]
    for i, r in enumerate(recs):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    loaded = pr.load_results(tmp_path)
    assert [registry.of(r)["description"] for r in pr.by_family(loaded)] == ["float32, as loaded",
                                                                               "bfloat16, cast on load"]
    made = pr.plot_all(loaded, tmp_path / "figures")
    assert any(p.name.startswith("pareto_") for p in made)


def test_a_record_without_its_identity_is_refused_by_the_readers(tmp_path, capsys):
    from conftest import record

    import plot_results as pr
    old = record("baseline-fp32", 20.0, 100.0)
    del old["method"]["identity"]
    assert registry.identity_from_settings({**old, "kind": "eval", "method": {
        **old["method"], "settings": {"dtype": "float32", "quantized": False}}})["name"] == "baseline-fp32"
    with pytest.raises(KeyError, match="upgrade_results"):
        registry.of(old)
    with pytest.warns(UserWarning, match="upgrade_results"):
        assert pr.eval_groups([old]) == {}
