"""Contamination guard: chat template, BOS exactly once, messages and markers refused."""

import pytest
from tiny import tiny_model, tiny_tokenizer
from tokenizers import processors

from cai_lib import guard
from cai_lib.errors import CaiError


@pytest.fixture()
def tok():
    # Fresh per test: the guard mutates tokenizers (template removed, policy cached).
    return tiny_tokenizer()


def _auto_bos_tokenizer():
    """A tokenizer that inserts BOS by itself, like Gemma's and Llama's."""
    t = tiny_tokenizer()
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", t.bos_token_id)])
    assert t("hi")["input_ids"][0] == t.bos_token_id  # precondition: it really adds BOS
    return t


def test_strip_chat_template_removes_and_records(tok):
    assert tok.chat_template  # tiny tokenizer ships one on purpose
    guard.strip_chat_template(tok)
    assert tok.chat_template is None
    with pytest.raises(Exception):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    st = tok._cai_guard
    assert st["chat_template_removed"] and st["had_chat_template"]


def test_stripped_template_not_resurrected_by_save(tok, tmp_path):
    from transformers import AutoTokenizer
    guard.strip_chat_template(tok)
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None


def test_bos_prepended_once_when_tokenizer_does_not_add_it(tok):
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # tiny tokenizer adds no BOS
    ids = guard.encode_prompts(tok, ["Q: What is two plus two?\nA:"])[0]
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1
    assert ids[1:] == tok("Q: What is two plus two?\nA:", add_special_tokens=False)["input_ids"]
    assert guard.bos_policy(tok)["mode"] == "prepend"


def test_bos_not_doubled_when_tokenizer_adds_it():
    t = _auto_bos_tokenizer()
    ids = guard.encode_prompts(t, ["Write one sentence about cats."])[0]
    assert ids.count(t.bos_token_id) == 1 and ids[0] == t.bos_token_id
    assert ids == t("Write one sentence about cats.")["input_ids"]  # same as the tokenizer's own encoding
    assert guard.bos_policy(t)["mode"] == "tokenizer_adds"


def test_no_bos_when_model_declares_none(tok):
    m = tiny_model(tok)
    m.config.bos_token_id = None
    assert guard.bos_policy(tok, m)["mode"] == "none"
    ids = guard.encode_prompts(tok, ["hello"])[0]
    assert tok.bos_token_id not in ids


def test_prompt_with_literal_bos_is_refused_as_double_bos(tok):
    with pytest.raises(CaiError, match="second BOS"):
        guard.encode_prompts(tok, ["<bos>Q: hi\nA:"])


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "List three colors."}],
    {"role": "user", "content": "hi"},
    ({"role": "system", "content": "x"}, {"role": "user", "content": "y"}),
])
def test_chat_messages_refused(tok, messages):
    with pytest.raises(CaiError, match="chat messages"):
        guard.refuse_messages(messages)
    with pytest.raises(CaiError, match="chat messages"):
        guard.encode_prompts(tok, ["fine", messages])


def test_non_string_prompt_refused(tok):
    with pytest.raises(CaiError, match="must be a string"):
        guard.encode_prompts(tok, [42])


@pytest.mark.parametrize("prompt,what", [
    ("<start_of_turn>user\nList three colors.<end_of_turn>", "<start_of_turn>"),  # known special + marker
    ("[INST] List three colors. [/INST]", "[INST]"),             # not special in this vocab: text check
    ("<|im_start|>user\nhi", "<|im_start|>"),
    ("<|user|> hi", "<|user|>"),
])
def test_chat_markers_refused(tok, prompt, what):
    with pytest.raises(CaiError, match="chat marker") as e:
        guard.check_prompts(tok, ["Q: fine\nA:", prompt])
    assert what in str(e.value) and "prompt 1" in str(e.value)


def test_other_special_tokens_refused(tok):
    with pytest.raises(CaiError, match="special token '<eos>'"):
        guard.check_prompts(tok, ["The end.<eos> Next"])
    with pytest.raises(CaiError, match="special token"):
        guard.check_prompts(tok, ["padded<pad>"])


def test_additional_special_tokens_refused(tok):
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>"]})
    with pytest.raises(CaiError, match="<tool_call>"):
        guard.check_prompts(tok, ["call <tool_call> now"])


def test_plain_prompts_pass(tok):
    guard.check_prompts(tok, ["Instruction: List three colors.\nResponse:", "Human: hi", "Q: 2+2?\nA:"])


@pytest.mark.parametrize("name,instruct", [
    ("google/gemma-3-270m-it", True),
    ("google/gemma-3-270m", False),
    ("gemma-3-270m-pt", False),
    ("Qwen/Qwen2.5-0.5B-Instruct", True),
    ("Qwen/Qwen2.5-0.5B", False),
    ("meta-llama/Llama-2-7b-chat-hf", True),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("my-model-sft", True),
    ("zephyr-7b-dpo-full", True),
    ("mistral-7b-v0.1", False),
    ("italian-gpt2", False),     # "it" only as a whole name part
    ("EleutherAI/pythia-160m", False),
    ("TinyLlama-1.1B-Chat-v1.0", True),
    ("", False),
])
def test_is_instruct_name(name, instruct):
    assert guard.is_instruct_name(name) is instruct


def test_guard_report(tiny_model_dir):
    from cai_lib.models import load_base
    loaded = load_base(str(tiny_model_dir))
    rep = guard.guard_report(loaded)
    assert rep["chat_template_removed"] and rep["had_chat_template"] and not rep["chat_template_now"]
    assert rep["bos_policy"] == "prepend" and rep["bos_token"] == "<bos>"
    assert rep["instruct_check"]["instruct_like"] is False
