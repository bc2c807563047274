"""The pair-tokenisation contract of stage 02 (cai_lib.pair_tokens): ids, separators,
drop rules and the pairs file. Needs only a tokenizer (no TRL, no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cai_lib import pair_tokens
from cai_lib.errors import CaiError

sys.path.insert(0, str(Path(__file__).parent))
from test_train import easy_pairs, small_cfg  # noqa: E402


# ---------------------------------------------------------------------------------------
# tokenization
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("leading_space,sep", [(False, "\n"), (True, " ")])
def test_prompt_plus_chosen_is_bos_prompt_completion_eos(tiny_tok, leading_space, sep):
    row = {"prompt": "Answer this question: What is the capital of France?", "chosen": "  Paris.\n", "rejected": "Q: next"}
    enc = pair_tokens.encode_pair(tiny_tok, row, leading_space=leading_space)
    full = enc["prompt_ids"] + enc["chosen_ids"]
    bos, eos = tiny_tok.bos_token_id, tiny_tok.eos_token_id
    # BOS exactly once, first; EOS exactly once, last.
    assert full[0] == bos and full.count(bos) == 1
    assert full[-1] == eos and full.count(eos) == 1
    assert enc["rejected_ids"][-1] == eos and enc["rejected_ids"].count(eos) == 1
    # The prompt is what evaluation encodes: BOS + the raw instruction, no chat template.
    assert enc["prompt_ids"] == [bos] + tiny_tok(row["prompt"], add_special_tokens=False)["input_ids"]
    turn = tiny_tok.convert_tokens_to_ids("<start_of_turn>")
    assert turn not in full
    # The text the model is taught to write after the instruction: separator + answer, then EOS.
    assert tiny_tok.decode(enc["chosen_ids"][:-1]) == sep + "Paris."
    assert tiny_tok.decode(full, skip_special_tokens=True) == row["prompt"] + sep + "Paris."


def test_prompt_ending_in_newline_gets_no_second_newline(tiny_tok):
    enc = pair_tokens.encode_pair(tiny_tok, {"prompt": "List three colors.\n", "chosen": "red", "rejected": "Q:"}, leading_space=False)
    assert tiny_tok.decode(enc["chosen_ids"][:-1]) == "red"


def test_long_pairs_are_dropped_and_counted(tiny_tok):
    rows = easy_pairs(4) + [
        {"prompt": "What is two plus two? " * 20, "chosen": "Four.", "rejected": "Five."},
        {"prompt": "Is water wet?", "chosen": "Yes. " * 40, "rejected": "No."},
        {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": " Yes. "},
        {"prompt": "Is water wet?", "chosen": "  ", "rejected": "No."},
        {"prompt": "Is water wet?", "chosen": "Yes.<eos> Q: more", "rejected": "No."},
    ]
    records, counts = pair_tokens.prepare_pairs(tiny_tok, rows, small_cfg())
    assert counts["total"] == 9 and counts["used"] == 4 == len(records)
    assert counts["dropped_prompt_too_long"] == 1 and counts["dropped_too_long"] == 1
    assert counts["dropped_identical"] == 1 and counts["dropped_empty"] == 1 and counts["dropped_special_tokens"] == 1
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 64 for r in records)


def test_chat_turn_markers_in_a_completion_drop_the_pair(tiny_tok):
    """<start_of_turn> is an added special token outside all_special_ids: training must not
    teach the base model chat markers the guard refuses in prompts."""
    assert tiny_tok.convert_tokens_to_ids("<start_of_turn>") not in tiny_tok.all_special_ids
    rows = easy_pairs(2) + [{"prompt": "Say hi.", "chosen": "Hi <start_of_turn>user", "rejected": "No."}]
    records, counts = pair_tokens.prepare_pairs(tiny_tok, rows, small_cfg())
    assert counts["dropped_special_tokens"] == 1 and counts["used"] == 2 == len(records)


def test_all_pairs_too_long_is_an_error(tiny_tok, tmp_path):
    with pytest.raises(CaiError, match="all 8 pairs were dropped"):
        pair_tokens.prepare_pairs(tiny_tok, easy_pairs(), small_cfg(max_length=8, max_prompt_length=4))


@pytest.mark.parametrize("content,match", [
    ("", "no preference pairs"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen"\n', "not valid JSON"),
    ('{"prompt": "a", "chosen": "b"}\n', "missing field 'rejected'"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', "must be a string"),
])
def test_bad_pairs_file(tmp_path, content, match):
    p = tmp_path / "pairs.jsonl"
    p.write_text(content)
    with pytest.raises(CaiError, match=match):
        pair_tokens.load_pairs(p)
