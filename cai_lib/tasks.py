"""Instruction items with verifiable checks, built from the curated fact tables.

Every item is built from a curated fact (cai_lib/facts) and a template, and carries a
`topic` key naming the fact it asks about; `build_all` returns them all, before any split.
The train/eval split by topic, the pools and the persistent eval set are `cai_lib.split`.

Checks are fair to a correct answer: value checks use generous accepted-answer lists, and
length/shape checks appear only when the instruction asks for them ("in one sentence" ->
sentences 1, "in one word" -> max_words 1, "List three" -> items 3).
"""

from __future__ import annotations

import hashlib

from . import facts as F
from .errors import CaiError
from .items import VALID_TYPES
from .text import number_words

TYPES = VALID_TYPES  # the item schema's types, in the order the rotation uses


def _rotated(topic: str, k: int, stride: int = 1) -> str:
    """The type of a topic's k-th item: types rotate from a topic-seeded start, so one topic's
    items spread over types and every type draws on every fact table."""
    return TYPES[(_h(topic) % 4 + stride * k) % 4]


def _form(typ: str) -> list[dict]:
    """The extra check a generation item carries: exactly one sentence."""
    return [{"kind": "sentences", "n": 1}] if typ == "generation" else []


def stable_hash(*parts) -> int:
    """A hash that is the same in every process and Python version (unlike hash())."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


_h = stable_hash  # the builders' short name for their many keyed choices


def _pick(options, *key):
    """Deterministic choice keyed by the fact, so adding facts never reshuffles others."""
    return options[_h(*key) % len(options)]


def number_check(n: int) -> dict:
    """`number` where the scorer reads words (<= 20); beyond that digits or spelled-out words."""
    if n <= 20:
        return {"kind": "number", "value": n}
    return {"kind": "contains_any", "values": [str(n)] + number_words(n)}


def _any(values) -> dict:
    return {"kind": "contains_any", "values": list(values)}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _item(out, topic, typ, instruction, checks, source):
    out.append({"type": typ, "instruction": instruction, "checks": checks, "topic": topic, "source": source})


# ---- builders: each yields items for one fact table -------------------------------------

def _capitals(out):
    for country, caps in F.CAPITALS:
        t = f"capital:{country.lower().replace('the ', '')}"
        _item(out, t, "qa", _pick(["Answer this question: What is the capital of {c}?", "Q: What is the capital of {c}?",
                                   "Question: Which city is the capital of {c}?", "What is the capital city of {c}?"],
                                  t, "qa").format(c=country), [_any(caps)], "capitals")
        _item(out, t, "completion", _pick(["Complete this sentence: The capital of {c} is",
                                           "Fill in the blank: The capital of {c} is ___."], t, "co").format(c=country),
              [_any(caps)], "capitals")
        _item(out, t, "response", _pick(["Reply to: Hi! Do you know what the capital of {c} is?",
                                         "Reply to this message: I'm planning a trip to {c}. Which city is its capital?",
                                         "Respond to: Quick question, what is the capital of {c}?"], t, "re").format(c=country),
              [_any(caps)], "capitals")
        if _h(t, "gen") % 2 == 0:
            _item(out, t, "generation", f"Write one sentence that names the capital of {country}.",
                  [_any(caps), {"kind": "sentences", "n": 1}], "capitals")


def _arithmetic(out):
    ops = {"add": ("plus", lambda a, b: a + b), "mul": ("times", lambda a, b: a * b),
           "sub": ("minus", lambda a, b: a - b)}
    templates = {
        "qa": ["Answer this question: What is {x} {op} {y}?", "Q: What is {x} {op} {y}?", "Question: How much is {x} {op} {y}?"],
        "completion": ["Complete this sentence: {x} {op} {y} equals", "Fill in the blank: {x} {op} {y} is ___."],
        "response": ["Reply to: Can you tell me what {x} {op} {y} is?", "Respond to this message: I need to know {x} {op} {y}. What is it?"],
        "generation": ["Write one sentence that says what {x} {op} {y} equals."],
    }
    for a in range(1, 13):
        for b in range(a, 13):
            t = f"arith:{a},{b}"
            wanted = ["add"] + (["mul"] if a >= 2 else []) + (["sub"] if b > a else [])
            for k, op in enumerate(wanted):
                typ = _rotated(t, k)
                word, fn = ops[op]
                x, y = (b, a) if op == "sub" else _pick([(a, b), (b, a)], t, op)
                ins = _pick(templates[typ], t, op).format(x=x, op=word, y=y)
                checks = [number_check(fn(x, y))]
                checks += _form(typ)
                _item(out, t, typ, ins, checks, "arithmetic")


def _opposites(out):
    asked = set()  # "light" is in two pairs (dark, heavy): ask about each word once
    for a, b in F.OPPOSITES:
        t = "opposite:" + "-".join(sorted((a, b)))
        for k, (w, ans) in enumerate(((a, b), (b, a))):
            if w in asked:
                continue
            asked.add(w)
            accepted = [ans] + F.OPPOSITE_ALTS.get(w, [])
            typ = _rotated(t, k, 2)
            if typ == "qa":
                ins, checks = _pick(["What is the opposite of {w}?", "Q: What is the opposite of '{w}'?",
                                     "Answer this question: What word means the opposite of {w}?"], t, w).format(w=w), [_any(accepted)]
            elif typ == "completion":
                ins, checks = _pick(["Complete this sentence: The opposite of {w} is",
                                     "Fill in the blank: The opposite of '{w}' is ___."], t, w).format(w=w), [_any(accepted)]
            elif typ == "response":
                ins = f"Reply in one word: What is the opposite of {w}?"
                checks = [_any(accepted), {"kind": "max_words", "n": 1}]
            else:
                ins = f"Write one sentence that uses the word '{w}' and its opposite."
                checks = [{"kind": "contains_all", "values": [w]}, _any(accepted), {"kind": "sentences", "n": 1}]
            _item(out, t, typ, ins, checks, "opposites")


def _animals(out):
    for animal, sounds, babies, homes in F.ANIMALS:
        t = f"animal:{animal}"
        art = "an" if animal[0] in "aeiou" else "a"
        facts = []
        if sounds:
            facts.append((sounds, {
                "qa": f"What sound does {art} {animal} make?",
                "completion": f"Complete this sentence: The sound {art} {animal} makes is called a",
                "response": f"Reply to: My little brother wants to know what sound {art} {animal} makes. What should I tell him?",
                "generation": f"Write one sentence about the sound {art} {animal} makes."}))
        if babies:
            facts.append((babies, {
                "qa": f"Q: What is a baby {animal} called?",
                "completion": f"Fill in the blank: A baby {animal} is called a ___.",
                "response": f"Reply to: What do you call a baby {animal}?",
                "generation": f"Write one sentence that says what a baby {animal} is called."}))
        if homes:
            facts.append((homes, {
                "qa": f"Answer this question: Where does {art} {animal} usually live?",
                "completion": f"Complete this sentence: {_cap(art)} {animal} usually lives in a",
                "response": f"Reply to: Where would I find {art} {animal} living?",
                "generation": f"Write one sentence about where {art} {animal} lives."}))
        for k, (accepted, phr) in enumerate(facts):
            typ = _rotated(t, k)
            checks = [_any(accepted)] + _form(typ)
            _item(out, t, typ, phr[typ], checks, "animals")


def _colors(out):
    for thing, colors, all_required in F.COLORS:
        t = f"color:{thing}"
        chk = {"kind": "contains_all", "values": colors} if all_required else _any(colors)
        variants = {
            "qa": [f"What color is {thing}?", f"Q: What color is {thing}?"],
            "completion": [f"Complete this sentence: The color of {thing} is", f"Fill in the blank: {_cap(thing)} is usually ___."],
            "response": [f"Reply to: What color is {thing}?" if all_required else f"Reply in one word: What color is {thing}?"],
            "generation": [f"Write one sentence that describes the color of {thing}."],
        }
        for k in range(2 + _h(t, "n") % 2):
            typ = _rotated(t, k)
            checks = [chk]
            checks += _form(typ)
            if typ == "response" and not all_required:
                checks.append({"kind": "max_words", "n": 1})
            _item(out, t, typ, _pick(variants[typ], t, typ), checks, "colors")


def _qa_table(out, rows, prefix, source):
    """COUNTS / SPACE style rows: (slug, question, stem-or-blank, answer)."""
    for slug, question, stem, answer in rows:
        t = f"{prefix}:{slug}"
        chk = number_check(answer) if isinstance(answer, int) else _any(answer)
        comp = f"Fill in the blank: {stem}" if "___" in stem else _pick(
            [f"Complete this sentence: {stem}", f"Fill in the blank: {stem} ___."], t, "co")
        variants = {
            "qa": _pick([f"Answer this question: {question}", f"Q: {question}", question], t, "qa"),
            "completion": comp,
            "response": f"Reply to: Quick question. {question}",
            "generation": f"Write one sentence that answers this question: {question}",
        }
        for k in range(3):
            typ = _rotated(t, k)
            checks = [chk] + _form(typ)
            _item(out, t, typ, variants[typ], checks, source)


def _elements(out):
    for name, sym in F.ELEMENTS:
        t = f"element:{name}"
        rows = {
            "qa": (_pick([f"What is the chemical symbol for {name}?", f"Q: What is the chemical symbol of {name}?"], t, "qa"), [sym]),
            "completion": (f"Complete this sentence: The chemical symbol for {name} is", [sym]),
            "response": (f"Reply to: I forgot which element has the chemical symbol {sym}. Can you tell me?", [name]),
            "generation": (f"Write one sentence that gives the chemical symbol for {name}.", [sym]),
        }
        for k in range(2):
            typ = _rotated(t, k)
            ins, ans = rows[typ]
            checks = [_any(ans)] + _form(typ)
            _item(out, t, typ, ins, checks, "elements")


def _calendar(out, seq, unit, source):
    for i, cur in enumerate(seq):
        nxt = seq[(i + 1) % len(seq)]
        t = f"{unit}:{cur.lower()}-{nxt.lower()}"
        rows = {
            "qa": (_pick([f"What {unit} comes after {cur}?", f"Q: Which {unit} comes right before {nxt}?"], t, "qa"), None),
            "completion": (_pick([f"Complete this sentence: The {unit} after {cur} is", f"Fill in the blank: The {unit} before {nxt} is ___."], t, "co"), None),
            "response": (f"Reply to: It is {cur} now. What {unit} comes next?", nxt),
            "generation": (f"Write one sentence that says which {unit} comes after {cur}.", nxt),
        }
        for k in range(3):
            typ = _rotated(t, k)
            ins, ans = rows[typ]
            if ans is None:
                ans = cur if "before" in ins else nxt
            checks = [_any([ans])] + _form(typ)
            _item(out, t, typ, ins, checks, source)


def _yes_no(out):
    for q, ans in F.YES_NO:
        t = "yesno:" + "-".join(q.lower().rstrip("?").split())
        typ = _pick(["qa", "response"], t)
        frame = _pick(["Answer with yes or no: {q}", "Answer yes or no: {q}"] if typ == "qa" else
                      ["Respond with yes or no: {q}", "Reply with yes or no: {q}"], t, "f")
        _item(out, t, typ, frame.format(q=q), [{"kind": "yes_no", "value": ans}], "yes_no")


def _categories(out):
    for slug, plural, members in F.CATEGORIES:
        t = f"list:{slug}"
        checks = [{"kind": "items", "n": 3}, _any(members)]
        _item(out, t, "generation", _pick(["List three {p}.", "Name three {p}.", "Give three examples of {p}."], t, "g").format(p=plural),
              checks, "categories")
        typ = _pick(["qa", "response"], t)
        ins = (f"Question: What are three {plural}?" if typ == "qa" else
               _pick([f"Reply to: Can you name three {plural}?", f"Respond to this message: I need three {plural} for a quiz. Can you list them?"], t, "r"))
        _item(out, t, typ, ins, checks, "categories")


def _subjects(out):
    for subject, keywords in F.SUBJECTS:
        t = "about:" + subject.replace(" ", "-")
        kw = _any(keywords)
        rows = [
            (f"Write one sentence about {subject}.", [kw, {"kind": "sentences", "n": 1}]),
            (f"Write two sentences about {subject}.", [kw, {"kind": "sentences", "n": 2}]),
            (f"Describe {subject} in one sentence.", [kw, {"kind": "sentences", "n": 1}]),
            (f"Write a short sentence about {subject}, using at most twelve words.", [kw, {"kind": "sentences", "n": 1}, {"kind": "max_words", "n": 12}]),
        ]
        ins, checks = _pick(rows, t, "g")
        _item(out, t, "generation", ins, checks, "subjects")
        if _h(t, "r") % 2 == 0:
            _item(out, t, "response", f"Reply to: Tell me something about {subject} in one sentence.",
                  [kw, {"kind": "sentences", "n": 1}], "subjects")


def _replies(out):
    for slug, msg, accepted in F.REPLIES:
        t = f"reply:{slug}"
        ins = _pick(["Reply to: {m}", "Respond to this message: {m}", "Write a reply to this message: {m}"], t).format(m=msg)
        _item(out, t, "response", ins, [_any(accepted)], "replies")
        if _h(t, "2") % 2 == 0:
            _item(out, t, "response", f"Reply in one sentence to: {msg}", [_any(accepted), {"kind": "sentences", "n": 1}], "replies")


BUILDERS = (_capitals, _arithmetic, _opposites, _animals, _colors,
            lambda o: _qa_table(o, F.COUNTS, "count", "counts"), lambda o: _qa_table(o, F.SPACE, "space", "space"),
            _elements, lambda o: _calendar(o, F.DAYS, "day", "days"), lambda o: _calendar(o, F.MONTHS, "month", "months"),
            _yes_no, _categories, _subjects, _replies)


def build_all() -> list[dict]:
    """Every templated item, before the split (no ids yet)."""
    out: list[dict] = []
    for b in BUILDERS:
        b(out)
    seen = set()
    for it in out:
        if it["instruction"] in seen:
            raise CaiError(f"cai_lib/facts: duplicate instruction {it['instruction']!r} — fix the fact table")
        seen.add(it["instruction"])
    return out
