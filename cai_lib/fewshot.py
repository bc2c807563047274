"""Few-shot bank for data-generation prompts (never used at evaluation).

One record per example holds everything the three data-generation steps need:

* response:  (instruction, good answer)
* critique:  (instruction, flawed answer, critique against the Stage-1 principles:
             follow the instruction, be accurate, be complete, be concise)
* revision:  (instruction, flawed answer, critique, revision)

Flaws are varied on purpose (wrong fact, off-topic, incomplete, too long, runs on into a
new prompt, wrong format) so the critique step does not learn "shorter is better" — the
seed review's warning about "improving" answers by shortening them. Each record has a
`topic`; the split in cai_lib.split forces these topics to the train side, and the leakage
guard checks every few-shot instruction against the eval set.
"""

from __future__ import annotations

import random

from .errors import CaiError
from .items import VALID_TYPES

STEPS = ("response", "critique", "revision")
TYPES = VALID_TYPES


def _ex(topic, instruction, good, flawed, critique):
    # the revision of a flawed answer is the good answer itself
    return {"topic": topic, "instruction": instruction, "good": good, "flawed": flawed,
            "critique": critique, "revision": good}


_BANK = {
    "qa": [
        _ex("capital:japan", "What is the capital of Japan?", "The capital of Japan is Tokyo.",
            "Japan is a country in Asia made up of many islands.",
            "It does not follow the instruction: it describes Japan but never names the capital. It should name Tokyo."),
        _ex("animal:cat", "Q: How many legs does a cat have?", "A cat has 4 legs.",
            "A cat has 4 legs.\nQ: How many legs does a dog have?\nA: A dog has 4 legs.",
            "The answer is accurate but not concise: after answering it goes on to write a new question nobody asked. It should stop after the answer."),
        _ex("animal:bee", "Answer this question: What do bees make?", "Bees make honey.", "Bees make milk.",
            "The answer is not accurate: bees make honey, not milk."),
        _ex("fs:shakespeare", "Question: Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet.",
            "Romeo and Juliet is a famous play about two young lovers.",
            "It does not follow the instruction: the question asks who wrote the play, and the answer never names the author, William Shakespeare."),
        _ex("fs:largest-ocean", "What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
            "The Atlantic Ocean is the largest ocean on Earth.",
            "The answer is not accurate: the largest ocean is the Pacific, not the Atlantic."),
        _ex("count:days-year", "Q: How many days are in a leap year?", "A leap year has 366 days.", "A leap year has 365 days.",
            "The answer is not accurate: 365 is an ordinary year; a leap year has 366 days."),
        _ex("fs:plant-food", "What do plants need to make their own food?",
            "Plants need sunlight, water and carbon dioxide from the air to make their food.", "Sunlight.",
            "The answer is accurate but not complete: plants also need water and carbon dioxide from the air."),
        _ex("count:water-freezes", "Answer this question: At what temperature does water freeze on the Celsius scale?",
            "Water freezes at 0 degrees Celsius.", "Water freezes at 100 degrees Celsius.",
            "The answer is not accurate: 100 degrees is where water boils; it freezes at 0 degrees Celsius."),
        _ex("animal:lion", "Q: Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle.",
            "The lion is known as the king of the jungle. Lions live in Africa, they have manes, they sleep most of the day, they hunt zebras and they roar loudly at night.",
            "The answer is accurate but not concise: the question asks only which animal, and the extra facts bury the answer."),
        _ex("fs:tallest-animal", "What is the tallest animal in the world?", "The giraffe is the tallest animal in the world.",
            "The elephant is the tallest animal in the world.",
            "The answer is not accurate: the elephant is the heaviest land animal, but the giraffe is the tallest."),
    ],
    "completion": [
        _ex("yesno:does-the-sun-rise-in-the-east", "Complete this sentence: Every morning the sun rises in the", "east.",
            "morning and it is nice and I like it and the",
            "It does not complete the sentence sensibly or accurately: it repeats words and trails off. The sun rises in the east."),
        _ex("element:hydrogen", "Fill in the blank: Water is made of hydrogen and ___.", "oxygen", "water",
            "The answer is not accurate: water cannot be made of itself; the missing element is oxygen."),
        _ex("animal:fish", "Complete this sentence: Fish live in", "water.", "the sky.",
            "The answer is not accurate: fish live in water, not in the sky."),
        _ex("about:a-rainbow", "Complete this sentence: A rainbow can appear when sunlight shines through",
            "raindrops in the air.", "raindrops in the air.\nComplete this sentence: A shadow appears when",
            "The ending is accurate but it does not stop: it starts a new instruction that was never asked. It should end after the sentence."),
        _ex("count:seasons", "Fill in the blank: A year has ___ seasons.", "4", "4 seasons, which are spring, summer, autumn and winter, and each one lasts about three months",
            "The answer is accurate but not concise: a blank needs only the missing word, 4."),
        _ex("about:a-cup-of-tea", "Complete this sentence: To make a cup of tea, you first",
            "boil some water.", "drink the tea.",
            "The answer is not accurate: you cannot drink the tea before making it; the first step is to boil water."),
        _ex("about:an-umbrella", "Complete this sentence: People carry an umbrella so that they",
            "stay dry when it rains.", "umbrella.",
            "It does not follow the instruction: one repeated word does not complete the sentence. It should say why people carry one: to stay dry in the rain."),
        _ex("fs:ice", "Fill in the blank: Ice is water that has ___.", "frozen", "melted",
            "The answer is not accurate: melted ice is liquid water; ice is water that has frozen."),
        _ex("month:december-january", "Complete this sentence: The first month of the year is", "January.", "Monday.",
            "The answer is not accurate and does not fit the sentence: Monday is a day, not a month. The first month is January."),
        _ex("count:triangle-sides", "Complete this sentence: A triangle has three", "sides and three corners.",
            "sides and four corners.",
            "The answer is not accurate: a triangle has three corners, not four."),
    ],
    "generation": [
        _ex("fs:butterfly", "Write one sentence about a butterfly.", "A butterfly has bright wings and flies from flower to flower.",
            "Butterflies are insects. They have colorful wings. They drink nectar from flowers.",
            "It does not follow the instruction: it was asked for one sentence and gives three. It should be a single sentence."),
        _ex("about:the-beach", "List three things you can find at the beach.", "Sand, shells, and seaweed.", "Sand.",
            "The answer is not complete: it lists one thing, and the instruction asks for three."),
        _ex("fs:grandmother", "Write two sentences about a grandmother.",
            "My grandmother loves to bake bread. She always shares it with our neighbors.",
            "My grandmother loves to bake bread.",
            "The answer is not complete: the instruction asks for two sentences and this gives only one."),
        _ex("count:rainbow-colors", "Name three colors of the rainbow.", "Red, orange, and yellow.",
            "Red, orange, yellow, green, blue, indigo, and violet.",
            "It does not follow the instruction: it asks for three colors and the answer lists seven."),
        _ex("fs:kite", "Write a short sentence about a kite, using at most eight words.", "The red kite danced high in the wind.",
            "On a windy Saturday afternoon, my little brother and I flew a bright red kite high over the hill behind our school.",
            "It does not follow the instruction: the sentence is far longer than eight words. It should be short."),
        _ex("fs:gentle", "Write one sentence that uses the word 'gentle'.", "The nurse was gentle with the small child.",
            "The nurse was kind to the small child.",
            "It does not follow the instruction: the sentence never uses the word 'gentle'."),
        _ex("color:a lemon", "Describe a lemon in one sentence.", "A lemon is a sour yellow fruit.",
            "A lemon is a sweet purple fruit.",
            "The answer is not accurate: lemons are sour and yellow, not sweet and purple."),
        _ex("fs:writing-tools", "List three things people use to write.", "A pen, a pencil, and a marker.", "A pen and a pencil.",
            "The answer is not complete: it names two things and the instruction asks for three."),
        _ex("fs:sleep", "Write one sentence about why people need sleep.", "People need sleep so their bodies and minds can rest and recover.",
            "Sleep.",
            "It does not follow the instruction: one word is not a sentence, and it does not say why people need sleep."),
        _ex("fs:footwear", "Name three things you wear on your feet.", "Socks, shoes, and boots.",
            "Socks, shoes, boots, sandals, and slippers.",
            "It does not follow the instruction: it asks for three things and the answer lists five."),
    ],
    "response": [
        _ex("about:homework", "Reply to: Can you help me with my homework?",
            "Of course! Tell me which subject and which question you are working on.",
            "Homework is work that students do at home.",
            "It does not follow the instruction: it defines homework instead of replying to the request for help."),
        _ex("fs:vacation", "Reply to: I'm going on vacation tomorrow!", "That sounds wonderful! Have a great trip.",
            "That sounds wonderful! Have a great trip.\nReply to: I'm going to the beach!\nThat sounds fun!",
            "The reply is fitting but not concise: it keeps going and writes a new message and reply. It should stop after the reply."),
        _ex("animal:cat", "Respond with yes or no: Is a cat a mammal?", "Yes.", "No.",
            "The answer is not accurate: cats are mammals, so the answer is yes."),
        _ex("fs:book-rec", "Reply to: Can you recommend a good book for children?",
            "Try \"Charlotte's Web\" by E. B. White; many children love it.", "Books are great.",
            "It does not follow the instruction: it was asked for a recommendation and names no book."),
        _ex("fs:marathon", "Reply to: I finished my first marathon today!", "Congratulations! That is an amazing achievement.",
            "A marathon is a race of about 42 kilometers.",
            "It does not follow the instruction: the message shares good news and the reply ignores it instead of congratulating the person."),
        _ex("fs:hola", "Respond to this message: Could you tell me how to say hello in Spanish?",
            "Hello in Spanish is \"hola\".", "Spanish is spoken in many countries.",
            "It does not follow the instruction: it never gives the Spanish word for hello, which is hola."),
        _ex("fs:sahara", "Reply with yes or no: Is the Sahara a desert?", "Yes.",
            "Yes, the Sahara is a desert. It is in Africa. It is very hot. It is very big. It has sand dunes and camels.",
            "The answer is accurate but not concise: a yes-or-no question needs only the answer."),
        _ex("animal:cat", "Reply to: My cat keeps scratching the sofa. What can I do?",
            "Give your cat a scratching post near the sofa and gently move it there whenever it starts to scratch.",
            "Cats are cute.",
            "It does not follow the instruction: it does not answer the question about stopping the scratching."),
        _ex("fs:ice", "Reply in one word: What is frozen water called?", "Ice.",
            "Frozen water is called ice, and it forms when water gets very cold.",
            "The answer is accurate but does not follow the instruction: it was asked for one word."),
        _ex("about:an-umbrella", "Reply to: Thanks for lending me your umbrella!", "You're welcome! I'm glad it kept you dry.",
            "Umbrellas keep people dry when it rains.",
            "It does not follow the instruction: it does not reply to the thanks; it should say you're welcome."),
    ],
}


def bank() -> dict:
    """FEWSHOT[type][step] -> list of example dicts with that step's fields (and an `id`
    such as "fs-qa-03", recorded by the pair builder with each generation)."""
    out = {}
    for typ, recs in _BANK.items():
        out[typ] = {s: [_view(r, s, f"fs-{typ}-{i:02d}") for i, r in enumerate(recs)] for s in STEPS}
    return out


def _view(rec: dict, step: str, ex_id: str) -> dict:
    base = {"id": ex_id, "topic": rec["topic"], "instruction": rec["instruction"]}
    if step == "response":
        return {**base, "answer": rec["good"]}
    if step == "critique":
        return {**base, "answer": rec["flawed"], "critique": rec["critique"]}
    return {**base, "answer": rec["flawed"], "critique": rec["critique"], "revision": rec["revision"]}


FEWSHOT = bank()


def rotate(type: str, step: str, k: int, rng: random.Random) -> list[dict]:
    """k distinct examples of `type` for `step`, drawn with the caller's seeded RNG."""
    if type not in FEWSHOT:
        raise CaiError(f"few-shot: unknown item type {type!r} — use one of {list(TYPES)}")
    if step not in STEPS:
        raise CaiError(f"few-shot: unknown step {step!r} — use one of {list(STEPS)}")
    pool = FEWSHOT[type][step]
    if not 0 <= k <= len(pool):
        raise CaiError(f"few-shot: asked for {k} examples but the {type}/{step} bank holds {len(pool)} — lower n_fewshot")
    return [dict(x) for x in rng.sample(pool, k)]


def all_fewshot_instructions() -> list[str]:
    """Every instruction shown in any data-generation prompt (for the leakage guard)."""
    return [r["instruction"] for recs in _BANK.values() for r in recs]


def fewshot_topics() -> set[str]:
    return {r["topic"] for recs in _BANK.values() for r in recs}
