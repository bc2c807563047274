import pytest

from cai_lib import manifest
from cai_lib.errors import CaiError
from cai_lib.runs import run_paths


def _run_with_adapter(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def test_manifest_update_merges_sections_atomically(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest.update(run, stages={"00": {"seconds": 1}})
    manifest.update(run, stages={"01": {"seconds": 2}}, git={"commit": "abc"})
    m = manifest.load(run)
    assert m["stages"] == {"00": {"seconds": 1}, "01": {"seconds": 2}}
    assert m["git"] == {"commit": "abc"}
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_snapshot_records_versions_hardware_and_file_hashes(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "eval_instructions.jsonl").write_text('{"id": "x"}\n')
    m = manifest.snapshot(run, {"seed": 7})
    assert m["seeds"] == {"seed": 7}
    assert m["versions"]["torch"] and m["versions"]["python"]
    assert m["hardware"]["cpu_count"] >= 1
    assert len(m["files"]["data/eval_instructions.jsonl"]) == 64


def test_unapproved_adapter_needs_explicit_override(tmp_path):
    run = _run_with_adapter(tmp_path)
    manifest.update(run, approval={"adapter_approved": False, "verdict": "FAIL"})
    with pytest.raises(CaiError, match="not approved"):
        manifest.stage1_adapter(run)
    assert manifest.stage1_adapter(run, allow_unapproved=True) == run_paths(run).adapter
    manifest.update(run, approval={"adapter_approved": True, "verdict": "PASS"})
    assert manifest.stage1_adapter(run) == run_paths(run).adapter
