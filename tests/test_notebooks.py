"""Notebooks and profiles agree: papermill only *warns* on unknown parameters, so a
misspelt profile key would silently do nothing. These tests make it an error."""

import json
from pathlib import Path

import papermill as pm
import pytest
import yaml

from cai_lib.config import RunConfig, load_profile
from cai_lib.errors import CaiError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROFILES = sorted((ROOT / "notebooks" / "params").glob("*.yaml"))
NOT_CONFIG = {"run_id"}


def params_of(nb):
    return pm.inspect_notebook(str(nb))


def test_all_five_stages_exist():
    assert [n.stem for n in NOTEBOOKS] == ["00_baseline", "01_generate", "02_train", "03_evaluate", "04_report"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stripped_with_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), "no parameters cell"
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), "committed with outputs"
    assert not any(c.get("execution_count") for c in cells if c["cell_type"] == "code")
    assert cells[0]["cell_type"] == "markdown" and "cai run" in "".join(cells[0]["source"])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_line_parses(nb):
    cell = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    lines = [ln for ln in "".join(cell["source"]).splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(params_of(nb)) == len(lines), "papermill could not parse a parameter line (quotes or ; in a comment?)"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_parameters_are_config_fields_with_cpu_quick_defaults(nb):
    defaults = RunConfig().to_dict()
    for name, spec in params_of(nb).items():
        if name in NOT_CONFIG:
            continue
        assert name in defaults, f"{nb.name}: parameter {name} is not a RunConfig field"
        value = eval(spec["default"])  # literal defaults written in the parameters cell
        assert value == defaults[name], f"{nb.name}: {name} default {value!r} != RunConfig {defaults[name]!r}"
        assert spec["help"], f"{nb.name}: parameter {name} has no comment"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_key_is_a_notebook_parameter(profile):
    declared = set().union(*(params_of(nb) for nb in NOTEBOOKS))
    keys = yaml.safe_load(profile.read_text())
    unknown = sorted(set(keys) - declared)
    assert not unknown, f"{profile.name}: keys no notebook declares: {unknown}"
    load_profile(str(profile))  # values valid too


def test_cpu_quick_profile_matches_config_defaults():
    values = load_profile("cpu-quick")
    defaults = RunConfig().to_dict()
    for k, v in values.items():
        assert defaults[k] == v, f"cpu-quick {k}={v!r} but RunConfig default is {defaults[k]!r}"


def test_unknown_profile_and_unknown_key_are_one_line_errors(tmp_path):
    with pytest.raises(CaiError, match="unknown profile"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 0.1\n")
    with pytest.raises(CaiError, match="unknown key 'lerning_rate'"):
        load_profile(str(bad))
