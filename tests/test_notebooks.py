"""Notebooks and profiles agree: papermill only *warns* on unknown parameters, so a
misspelt profile key would silently do nothing. These tests make it an error."""

import json
from pathlib import Path

import papermill as pm
import pytest
import yaml

from cai_lib.config import RunConfig, coerce, load_profile
from cai_lib.errors import CaiError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROFILES = sorted((ROOT / "notebooks" / "params").glob("*.yaml"))
NOT_CONFIG = {"run_id", "overwrite"}


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
def test_notebook_parameters_are_config_fields_that_default_to_the_run(nb):
    """A notebook opened on a finished run must use that run's config.json exactly: every
    config parameter defaults to None ("take it from the run"), never to a profile's value."""
    defaults = RunConfig().to_dict()
    params = params_of(nb)
    assert params["run_id"]["default"] == '""' and params["overwrite"]["default"] == "False"
    for name, spec in params.items():
        if name in NOT_CONFIG:
            continue
        assert name in defaults, f"{nb.name}: parameter {name} is not a RunConfig field"
        assert spec["default"] == "None", f"{nb.name}: {name} defaults to {spec['default']}, not None"
        assert spec["help"], f"{nb.name}: parameter {name} has no comment"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_it_line_names_the_run(nb):
    first = "".join(json.loads(nb.read_text())["cells"][0]["source"])
    assert "--run-id" in first and "--profile cpu-quick --stages" not in first


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_key_is_a_notebook_parameter(profile):
    declared = set().union(*(params_of(nb) for nb in NOTEBOOKS))
    keys = yaml.safe_load(profile.read_text())
    unknown = sorted(set(keys) - declared)
    assert not unknown, f"{profile.name}: keys no notebook declares: {unknown}"
    load_profile(str(profile))  # values valid too


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profiles_state_only_what_differs_from_the_defaults(profile):
    values = load_profile(str(profile))
    defaults = RunConfig().to_dict()
    same = sorted(k for k, v in values.items() if coerce(k, v) == defaults[k])
    assert not same, f"{profile.name} repeats RunConfig defaults: {same}"


def test_unknown_profile_and_unknown_key_are_one_line_errors(tmp_path):
    with pytest.raises(CaiError, match="unknown profile"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 0.1\n")
    with pytest.raises(CaiError, match="unknown key 'lerning_rate'"):
        load_profile(str(bad))
