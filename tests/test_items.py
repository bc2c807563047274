"""Item loading and the shipped starter items: schema errors are one-liners, and every
starter item's checks pass a correct, well-formed answer and fail a non-answer."""

import json
import re

import pytest

from cai_lib.errors import CaiError
from cai_lib.items import VALID_TYPES, load_items, starter_items_path, validate_item
from cai_lib.checks import check_passes
from cai_lib.scoring import score_record

# A correct, well-formed answer for every starter item, written the way a good
# instruction follower might (some terse, some chatty, bullets, numbering, newlines).
# Each must pass strict: if a check is unfair to a right answer, this catches it.
GOLD = {
    "qa-0001": "The capital of France is Paris.",
    "qa-0002": "Jupiter is the largest planet in our solar system. It is a gas giant more than eleven "
               "times wider than Earth, and its Great Red Spot is a storm larger than our whole planet.",
    "qa-0003": "William Shakespeare wrote Romeo and Juliet.",
    "qa-0004": "Au",
    "qa-0005": "A spider has eight legs.",
    "qa-0006": "7 times 8 is 56.",
    "qa-0007": "15 plus 27 equals 42.",
    "qa-0008": "64",
    "qa-0009": "There are 7 days in a week.",
    "qa-0010": "Yes.",
    "qa-0011": "No, the capital of Italy is Rome.",
    "qa-0012": "Water boils at 100 degrees Celsius at sea level.",
    "qa-0013": "Mars is known as the Red Planet.",
    "qa-0014": "Tokyo.",
    "qa-0015": "There are seven continents.",
    "qa-0016": "The square root of 81 is 9.",
    "qa-0017": "Plants absorb carbon dioxide (CO2) from the air.",
    "qa-0018": "Water freezes at 32 degrees Fahrenheit.",
    "qa-0019": "Yes, 17 is a prime number.",
    "qa-0020": "No. A whale is a mammal.",
    "qa-0021": "The Pacific Ocean is the largest ocean on Earth.",
    "qa-0022": "The pyramids of Giza are in Egypt.",
    "qa-0023": "There are sixty minutes in an hour.",
    "qa-0024": "54",
    "qa-0025": "Leonardo da Vinci painted the Mona Lisa.",
    "qa-0026": "Canberra is the capital of Australia, not Sydney as many people think.",
    "qa-0027": "Portuguese is the main language of Brazil.",
    "qa-0028": "12 divided by 4 is 3.",
    "qa-0029": "Yes",
    "qa-0030": "A hexagon has six sides.",
    "qa-0031": "Mount Everest is the tallest mountain in the world.",
    "qa-0032": "Avocado is the main ingredient in guacamole.",
    "qa-0033": "The lion is often called the king of the jungle.",
    "qa-0034": "Yes, ice floats on water.",
    "qa-0035": "The smallest prime number is 2.",
    "qa-0036": "A day has 24 hours.",
    "qa-0037": "Ottawa is the capital of Canada.",
    "qa-0038": "Blue.",
    "completion-0001": "east.",
    "completion-0002": "Celsius.",
    "completion-0003": "The first month of the year is January.",
    "completion-0004": "sides and three angles.",
    "completion-0005": "blue",
    "completion-0006": "cold.",
    "completion-0007": "four.",
    "completion-0008": "10, 12, 14",
    "completion-0009": "There are seven days in a week.",
    "completion-0010": "honey.",
    "completion-0011": "green.",
    "completion-0012": "Sun",
    "completion-0013": "Tuesday.",
    "completion-0014": "kitten",
    "completion-0015": "water.",
    "completion-0016": "blue whale.",
    "completion-0017": "7",
    "completion-0018": "Berlin.",
    "completion-0019": "time, there lived a princess in a tall tower.",
    "completion-0020": "H2O",
    "completion-0021": "winter.",
    "completion-0022": "months.",
    "completion-0023": "cow",
    "completion-0024": "25, 30, 35",
    "completion-0025": "piano.",
    "completion-0026": "sound.",
    "completion-0027": "Mercury.",
    "completion-0028": "night.",
    "completion-0029": "twelve",
    "completion-0030": "doctor away.",
    "completion-0031": "twenty-five, which is 25.",
    "completion-0032": "Madrid",
    "completion-0033": "E, F, G",
    "completion-0034": "oxygen.",
    "completion-0035": "15",
    "generation-0001": "The ocean covers more than two thirds of the surface of our planet.",
    "generation-0002": "Dogs are loyal companions that love to play outside.",
    "generation-0003": "- Apple\n- Banana\n- Mango",
    "generation-0004": "Red, yellow, and blue.",
    "generation-0005": "1. Mercury\n2. Venus\n3. Mars",
    "generation-0006": "Dolphins, sharks and octopuses.",
    "generation-0007": "The Moon orbits the Earth about once a month. Its gravity causes the tides.",
    "generation-0008": "Soft rain tapped gently on the window all night.",
    "generation-0009": "1, 2, 3, 4, 5",
    "generation-0010": "We had a picnic beside the river on Sunday.",
    "generation-0011": "What a beautiful day it is!",
    "generation-0012": "Will it rain tomorrow afternoon?",
    "generation-0013": "HELLO",
    "generation-0014": "The four seasons are:\n* Spring\n* Summer\n* Autumn\n* Winter",
    "generation-0015": "The Sun is a star at the centre of our solar system.",
    "generation-0016": "Red, orange and green.",
    "generation-0017": "Saturday and Sunday.",
    "generation-0018": "My favorite food is pizza with lots of cheese. I could eat it every day.",
    "generation-0019": "The cat sleeps all day.",
    "generation-0020": "The cat and the dog slept together by the fire.",
    "generation-0021": "A kettle, a frying pan and a fridge.",
    "generation-0022": "In winter the snow covers the hills like a white blanket.",
    "generation-0023": "Sleep is important because it lets the body repair itself, helps the brain store "
                       "memories, and keeps our mood and immune system healthy.",
    "generation-0024": "January, February, and March.",
    "generation-0025": "The Last Dragon of the Northern Mountains",
    "generation-0026": "France, Germany, and Italy.",
    "generation-0027": "A computer is a machine that stores and processes information.",
    "generation-0028": "2, 4, 6",
    "generation-0029": "Today the park was full of children playing.",
    "generation-0030": "Music brings people together at every celebration.",
    "generation-0031": "2, 3 and 5.",
    "generation-0032": "She picked a red apple from the tree.",
    "generation-0033": "Trees give us oxygen. They provide shade on hot days. Many animals live in trees.",
    "generation-0034": "A cat is a small, furry animal with sharp claws and soft paws.",
    "generation-0035": "Carrots and broccoli.",
    "generation-0036": "The clear summer sky was a deep and brilliant blue.",
    "response-0001": "I'm doing well, thank you for asking! How about you?",
    "response-0002": "Sure! 5 plus 3 is 8.",
    "response-0003": "Rome is in Italy. Have a wonderful trip!",
    "response-0004": "Goodbye! Take care.",
    "response-0005": "You're welcome! I'm glad I could help.",
    "response-0006": "Yes, your friend is right: a day has 24 hours.",
    "response-0007": "No.",
    "response-0008": "The capital of Italy is Rome.",
    "response-0009": "You could use \"small\".",
    "response-0010": "A bicycle has two wheels.",
    "response-0011": "Of course: tac.",
    "response-0012": "Bees make honey.",
    "response-0013": "You have 3 + 4 = 7 apples now.",
    "response-0014": "Take an umbrella and a raincoat.",
    "response-0015": "One, two, three.",
    "response-0016": "Yellow.",
    "response-0017": "Neither, they weigh the same: one kilogram each is still a kilogram.",
    "response-0018": "Put on a warm sweater and make yourself a cup of tea.",
    "response-0019": "Saturday comes after Friday.",
    "response-0020": "Yes, I can read it.",
    "response-0021": "In Spanish, \"hello\" is \"hola\".",
    "response-0022": "10 minus 4 is 6.",
    "response-0023": "A banana is a yellow fruit.",
    "response-0024": "Good morning! I hope you have a great day.",
    "response-0025": "You should call your vet as soon as possible.",
    "response-0026": "February has the fewest days.",
    "response-0027": "Mice.",
    "response-0028": "You could practice at a local swimming pool, ideally with a few lessons from an instructor.",
    "response-0029": "Exercise strengthens your heart and muscles. It also improves your mood and sleep.",
    "response-0030": "How about 7?",
    "response-0031": "Water freezes at 0 degrees Celsius.",
    "response-0032": "You will be 35 in five years, since 30 plus 5 is 35.",
    "response-0033": "No, it is not safe.",
    "response-0034": "The opposite of happy is sad.",
    "response-0035": "The Eiffel Tower is in Paris, France.",
}

# A non-answer that every item's checks must reject: otherwise the item verifies nothing.
NON_ANSWER = "I don't know."

# max_words only where the instruction itself asks for brevity (length never fails a
# response unless the item asks for it).
BREVITY_CUES = ("single number", "one word", "yes or no", "briefly", "no more than", "exactly five words",
                "title")


@pytest.fixture(scope="module")
def starter():
    return load_items(starter_items_path())


def test_starter_items_size_and_balance(starter):
    assert len(starter) >= 120
    counts = {t: sum(i["type"] == t for i in starter) for t in VALID_TYPES}
    assert all(n >= 25 for n in counts.values()), counts


def test_starter_items_unique_ids_and_instructions(starter):
    ids = [i["id"] for i in starter]
    assert len(set(ids)) == len(ids)
    norm = [" ".join(i["instruction"].lower().split()) for i in starter]
    assert len(set(norm)) == len(norm)
    for item in starter:
        assert re.fullmatch(rf"{item['type']}-\d{{4}}", item["id"]), item["id"]


def test_starter_items_use_varied_phrasings(starter):
    text = "\n".join(i["instruction"] for i in starter)
    for phrase in ("Answer this question:", "Q:", "Complete this sentence:", "Fill in the blank:",
                   "Write one sentence about", "List three", "Reply to:", "Respond with yes or no:"):
        assert phrase in text, phrase


def test_every_starter_item_has_a_gold_answer_that_passes_strict(starter):
    assert set(GOLD) == {i["id"] for i in starter}
    failed = {}
    for item in starter:
        r = score_record({**item, "response": GOLD[item["id"]], "finish_reason": "eos"})
        if not (r["strict"] and r["loose"] and r["form"]):
            failed[item["id"]] = r["failures"] + r["loose_failures"]
    assert not failed, failed


def test_every_starter_item_rejects_a_non_answer(starter):
    lenient = [i["id"] for i in starter if all(check_passes(c, NON_ANSWER) for c in i["checks"])]
    assert not lenient


def test_length_limits_only_where_the_instruction_asks(starter):
    for item in starter:
        if any(c["kind"] == "max_words" for c in item["checks"]):
            assert any(cue in item["instruction"].lower() for cue in BREVITY_CUES), item["id"]


# ----------------------------------------------------------------------------- bad items files

ITEM = {"id": "qa-0001", "type": "qa", "instruction": "Q: What is 2+2?", "checks": [{"kind": "number", "value": 4}]}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load_error(tmp_path, lines):
    path = _write(tmp_path / "items.jsonl", lines)
    with pytest.raises(CaiError) as exc:
        load_items(path)
    msg = str(exc.value)
    assert "\n" not in msg and "items.jsonl" in msg
    return msg


def test_load_items_valid_file(tmp_path):
    second = {**ITEM, "id": "qa-0002", "instruction": "Q: What is 3+3?"}
    rows = load_items(_write(tmp_path / "items.jsonl", [json.dumps(ITEM), "", json.dumps(second)]))
    assert [r["id"] for r in rows] == ["qa-0001", "qa-0002"]


def test_duplicate_ids_name_both_lines(tmp_path):
    msg = _load_error(tmp_path, [json.dumps(ITEM), json.dumps({**ITEM, "instruction": "Q: other?"})])
    assert "items.jsonl:2" in msg and "duplicates line 1" in msg and "'id'" in msg and "unique" in msg


def test_malformed_json_names_the_line(tmp_path):
    msg = _load_error(tmp_path, [json.dumps(ITEM), '{"id": "qa-0002", "type": '])
    assert "items.jsonl:2" in msg and "not valid JSON" in msg


@pytest.mark.parametrize("change,needle", [
    ({"type": "chat"}, "'type' is 'chat'"),
    ({"type": None}, "'type'"),
    ({"id": ""}, "'id'"),
    ({"id": 7}, "'id'"),
    ({"instruction": "   "}, "'instruction'"),
    ({"instruction": None}, "'instruction'"),
    ({"checks": []}, "'checks' is empty"),
    ({"checks": "contains_any"}, "'checks' must be a list"),
    ({"checks": [{"kind": "contains_some", "values": ["4"]}]}, "'checks[0].kind' is 'contains_some'"),
    ({"checks": [{"kind": "number"}]}, "'checks[0].value' is missing"),
])
def test_schema_errors_name_line_id_and_field(tmp_path, change, needle):
    msg = _load_error(tmp_path, [json.dumps({**ITEM, **change})])
    assert needle in msg and "items.jsonl:1" in msg


def test_missing_checks_field(tmp_path):
    item = {k: v for k, v in ITEM.items() if k != "checks"}
    msg = _load_error(tmp_path, [json.dumps(item)])
    assert "'checks' is missing" in msg and "qa-0001" in msg


def test_missing_empty_folder_and_binary_files(tmp_path):
    with pytest.raises(CaiError, match="file not found"):
        load_items(tmp_path / "none.jsonl")
    with pytest.raises(CaiError, match="is a folder"):
        load_items(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(CaiError, match="no eval items"):
        load_items(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(CaiError, match="not UTF-8"):
        load_items(tmp_path / "bin.jsonl")


def test_validate_item_direct():
    validate_item(ITEM, "x")
    with pytest.raises(CaiError, match="expected an item object"):
        validate_item(["not", "a", "dict"], "x")
