"""Curated fact tables behind the instruction pools (cai_lib.tasks builds items from them).

Plain Python data, so no package-data globs are needed. Facts are chosen so a small base
model could plausibly know them (school-level knowledge); every accepted-answer list is
generous (spelling variants, synonyms) so a correct answer is never scored wrong.
"""

from .world import CAPITALS, ELEMENTS, SPACE
from .everyday import (ANIMALS, CATEGORIES, COLORS, COUNTS, DAYS, MONTHS, OPPOSITE_ALTS, OPPOSITES, REPLIES,
                       SUBJECTS, YES_NO)

__all__ = ["CAPITALS", "ELEMENTS", "SPACE", "ANIMALS", "CATEGORIES", "COLORS", "COUNTS", "DAYS",
           "MONTHS", "OPPOSITE_ALTS", "OPPOSITES", "REPLIES", "SUBJECTS", "YES_NO"]
