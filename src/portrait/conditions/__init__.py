"""The condition language: one tree (:mod:`.ast`), two written forms (:mod:`.text`, :mod:`.jsonform`), a check
against the data (:mod:`.check`), and engines that agree -- Python (:mod:`.evaluate`), SQL
(:mod:`portrait.sql.conditions`) and English (:mod:`.describe`). See docs/segments.md.
"""

from portrait.conditions.ast import Condition
from portrait.conditions.check import Schema, check
from portrait.conditions.describe import describe
from portrait.conditions.jsonform import from_json, to_json
from portrait.conditions.text import ConditionError, parse, to_text

__all__ = ["Condition", "ConditionError", "Schema", "check", "describe", "from_json", "parse", "to_json", "to_text"]
