"""The readable text form of conditions: a parser that points at mistakes, and a printer.

``to_text(parse(text))`` gives the canonical form of ``text``; ``parse(to_text(c)) == c`` for every condition.
Grammar (keywords in any case; see docs/segments.md):

    condition  := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" condition ")" | function | FIELD comparison
    comparison := "=" v | "!=" v | ">" v | ">=" v | "<" v | "<=" v | ["not"] "in" "(" v, ... ")"
                | ["not"] "contains" v | "contains" ("any"|"all") "(" v, ... ")" | "starts with" v
                | "ends with" v | ["not"] "regex" v | ["not"] "between" v "and" v | "is" ["not"] "set"
                | "before" v | "after" v | "on" v | ["not"] "within" ("last"|"next") DURATION
    function   := performed(...) | first_time(...) op | last_time(...) op | stopped(...) | sequence(...)
                | sum|avg|min|max(EVENT, PROPERTY, ...) CMP NUMBER | in_segment(NAME)
    v          := "text" | 12 | 1.5 | true | false | 2026-01-31 | 2026-01-31T10:00:00Z | 30d ago
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from portrait.conditions.ast import (
    AGGREGATES,
    COMPARISONS,
    CONSENT_STATUSES,
    DURATION_UNITS,
    Aggregate,
    Ago,
    And,
    Compare,
    Condition,
    Consent,
    Duration,
    EventTime,
    InSegment,
    Not,
    Or,
    Performed,
    Sequence,
    Stopped,
    Value,
    Window,
)
from portrait.errors import BadRequest


class ConditionError(BadRequest):
    """A condition that cannot be read or does not fit the data; ``position`` is the offset in the text form."""

    code = "invalid_condition"

    def __init__(self, message: str, position: int | None = None) -> None:
        where = f"at position {position}: " if position is not None else ""
        super().__init__(where + message)
        self.position = position


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<duration>\d+[mhdw](?![A-Za-z0-9_]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>>=|<=|!=|=|>|<)
  | (?P<punct>[(),])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "word" else ""

    def describe(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConditionError(f"unexpected character {text[position]!r}{_instead(text, position)}", position)
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# Characters of other languages' operators, answered with what to write here (a data engineer types SQL's and
# JavaScript's first).
_WRITE_INSTEAD = {"&": " (write 'and')", "|": " (write 'or')"}


def _instead(text: str, position: int) -> str:
    if text[position] == "'":
        quoted = text[position + 1:].split("'", 1)[0]
        return f": text goes in double quotes ({json.dumps(quoted, ensure_ascii=False)}), not single ones"
    return _WRITE_INSTEAD.get(text[position], "")


_NULLS = ("null", "none", "nil", "undefined")
_KEYWORDS = frozenset(("in", "not", "contains", "any", "all", "starts", "ends", "with", "regex", "between", "and",
                       "or", "is", "set", "before", "after", "on", "within", "last", "next"))

FUNCTIONS = ("performed", "first_time", "last_time", "stopped", "sequence", "in_segment", "consent", *AGGREGATES)


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.current
        self.index += 1
        return token

    def fail(self, expected: str) -> ConditionError:
        return ConditionError(f"expected {expected}, found {self.current.describe()}", self.current.position)

    def at_word(self, *words: str) -> bool:
        return self.current.word in words

    def take_word(self, word: str) -> None:
        if self.current.word != word:
            raise self.fail(repr(word))
        self.advance()

    def take(self, text: str) -> None:
        if self.current.text != text or self.current.kind not in ("punct", "op"):
            raise self.fail(repr(text))
        self.advance()

    # -- grammar ---------------------------------------------------------------------------------------------
    def parse(self) -> Condition:
        condition = self.condition()
        if self.current.kind != "end":
            raise self.fail("'and', 'or' or the end")
        return condition

    def condition(self) -> Condition:
        items = [self.term()]
        while self.at_word("or"):
            self.advance()
            items.append(self.term())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def term(self) -> Condition:
        items = [self.factor()]
        while self.at_word("and"):
            self.advance()
            items.append(self.factor())
        return items[0] if len(items) == 1 else And(tuple(items))

    def factor(self) -> Condition:
        token = self.current
        if token.word == "not":
            self.advance()
            return Not(self.factor())
        if token.kind == "punct" and token.text == "(":
            self.advance()
            inner = self.condition()
            self.take(")")
            return inner
        if token.kind != "word":
            raise self.fail("a condition (an attribute, 'not', '(' or a function such as performed(...))")
        if token.word in FUNCTIONS and self.peek().text == "(":
            return self.function()
        self.advance()
        return self.comparison(token.text)

    def comparison(self, field: str) -> Compare:
        token = self.current
        if token.kind == "op":
            self.advance()
            return Compare(field, token.text, (self.value(),))
        negated = token.word == "not"
        if negated:
            self.advance()
        word = self.current.word
        if word in ("in", "contains", "regex", "between", "within") or (not negated and word in (
                "starts", "ends", "is", "before", "after", "on")):
            self.advance()
            op, values = self.operator_rest(word, negated)
            return Compare(field, op, values)
        allowed = "'in', 'contains', 'regex', 'between' or 'within'" if negated else (
            "an operator (=, !=, >, >=, <, <=, in, contains, starts with, ends with, regex, between, is set, "
            "before, after, on, within)")
        raise self.fail(f"{allowed} after {field!r}")

    def operator_rest(self, word: str, negated: bool) -> tuple[str, tuple[Value, ...]]:
        prefix = "not " if negated else ""
        if word == "in":
            return prefix + "in", self.value_list()
        if word == "contains":
            if not negated and self.at_word("any", "all"):
                return "contains " + self.advance().word, self.value_list()
            return prefix + "contains", (self.value(),)
        if word == "regex":
            return prefix + "regex", (self.value(),)
        if word == "between":
            low = self.value()
            self.take_word("and")
            return prefix + "between", (low, self.value())
        if word == "within":
            if not self.at_word("last", "next"):
                raise self.fail("'last' or 'next' after 'within'")
            direction = self.advance().word
            return f"{prefix}within {direction}", (self.duration(),)
        if word in ("starts", "ends"):
            self.take_word("with")
            return f"{word} with", (self.value(),)
        if word == "is":
            if self.at_word("not"):
                self.advance()
                self.take_word("set")
                return "is not set", ()
            self.take_word("set")
            return "is set", ()
        return word, (self.value(),)  # before, after, on

    def value_list(self) -> tuple[Value, ...]:
        self.take("(")
        values = [self.value()]
        while self.current.text == ",":
            self.advance()
            values.append(self.value())
        self.take(")")
        return tuple(values)

    def value(self) -> Value:
        token = self.current
        if token.kind == "string":
            self.advance()
            return str(json.loads(token.text))
        if token.kind == "number":
            self.advance()
            return float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
        if token.kind == "date":
            self.advance()
            try:
                return date.fromisoformat(token.text)
            except ValueError:
                raise ConditionError(f"{token.text} is not a date", token.position) from None
        if token.kind == "datetime":
            self.advance()
            return _datetime(token)
        if token.kind == "duration":
            duration = self.duration()
            self.take_word("ago")
            return Ago(duration)
        if token.word in ("true", "false"):
            self.advance()
            return token.word == "true"
        raise self._not_a_value(token)

    def _not_a_value(self, token: Token) -> ConditionError:
        """Where a value should be: SQL's `==` and `<>` read as an operator and a stray one, and a bare word as
        text without its quotes; said so, rather than only that a value was expected."""
        before = self.tokens[self.index - 1].text if self.index else ""
        if token.kind == "op" and before + token.text == "==":
            return ConditionError("'==' is not an operator: equality is one '='", token.position)
        if token.kind == "op" and before + token.text == "<>":
            return ConditionError("'<>' is not an operator: write '!=' for not equal", token.position)
        if token.word in _NULLS:  # SQL's habit; quoted, as said for other words, it is text that matches the word
            field = self._field_before()
            return ConditionError(f"there is no {token.text}: a value missing is '{field} is not set', one present "
                                  f"'{field} is set'", token.position)
        unquoted = f" (text goes in double quotes: {json.dumps(token.text)})" if token.kind == "word" else ""
        return ConditionError('expected a value ("text", a number, true/false, a date such as 2026-01-31, or 30d '
                              f"ago), found {token.describe()}{unquoted}", token.position)

    def _field_before(self) -> str:
        """The field a comparison is about: the nearest word before that is not one of the grammar's own."""
        words = (t.text for t in reversed(self.tokens[:self.index]) if t.kind == "word" and t.word not in _KEYWORDS)
        return next(words, "the field")

    def duration(self) -> Duration:
        token = self.current
        if token.kind != "duration":
            raise self.fail(f"a duration such as 30d ({', '.join(DURATION_UNITS)})")
        self.advance()
        return Duration(int(token.text[:-1]), token.text[-1])

    def string(self, what: str) -> str:
        token = self.current
        if token.kind != "string":
            raise self.fail(f"{what} in double quotes")
        self.advance()
        return str(json.loads(token.text))

    # -- functions -------------------------------------------------------------------------------------------
    def function(self) -> Condition:
        name = self.advance().word
        self.take("(")
        if name == "in_segment":
            segment = self.string("a segment name")
            self.take(")")
            return InSegment(segment)
        if name == "consent":
            purpose = self.string("a purpose or channel, e.g. \"email\"")
            self.take(")")
            relation = self.current
            if relation.kind != "op" or relation.text not in ("=", "!="):
                raise self.fail("'=' or '!=' after consent(...)")
            self.advance()
            status = self.current
            if status.word not in CONSENT_STATUSES:
                raise self.fail(f"{', '.join(CONSENT_STATUSES)}")
            self.advance()
            return Consent(purpose, relation.text, status.word)
        if name == "sequence":
            first = self.string("an event name")
            self.take(",")
            then = self.string("an event name")
            options = self.options(("within", "from", "to"))
            if "within" not in options:
                raise ConditionError("sequence(...) needs 'within = DURATION': the most time between the two events",
                                     self.current.position)
            return Sequence(first, then, _duration_option(options, "within"), _window(options, with_within=False))
        event = self.string("an event name")
        if name in AGGREGATES:
            self.take(",")
            prop = self.current
            if prop.kind != "word":
                raise self.fail("a property name")
            self.advance()
            options = self.options(("within", "from", "to", "where"))
            op, value = self.number_comparison()
            return Aggregate(name, event, prop.text, op, value, _window(options), _where(options))
        if name == "performed":
            options = self.options(("count", "within", "from", "to", "where"))
            count = options.get("count", (">=", 1))
            assert isinstance(count, tuple)
            return Performed(event, str(count[0]), int(count[1]), _window(options), _where(options))
        if name == "stopped":
            options = self.options(("recent", "earlier", "where"))
            for required in ("recent", "earlier"):
                if required not in options:
                    raise ConditionError(f"stopped(...) needs '{required} = DURATION'", self.current.position)
            return Stopped(event, _duration_option(options, "recent"), _duration_option(options, "earlier"),
                           _where(options))
        options = self.options(("where",))  # first_time / last_time
        op_token = self.current
        negated = op_token.word == "not"
        if negated:
            self.advance()
        word = self.current.word
        if word not in ("before", "after", "on", "within") or (negated and word != "within"):
            raise self.fail("'before', 'after', 'on' or '[not] within last'")
        self.advance()
        if word == "within" and not self.at_word("last"):
            raise self.fail("'last' after 'within'")
        op, values = self.operator_rest(word, negated)
        return EventTime(name.removesuffix("_time"), event, op, values, _where(options))

    def options(self, allowed: tuple[str, ...]) -> dict[str, object]:
        """``, name = value`` pairs up to ')'; ``where`` takes a condition and must come last."""
        found: dict[str, object] = {}
        while self.current.text == ",":
            self.advance()
            token = self.current
            if token.word not in allowed:
                raise self.fail(" or ".join(repr(a) for a in allowed))
            if token.word in found:
                raise ConditionError(f"{token.word!r} is given twice", token.position)
            self.advance()
            if token.word == "where":
                found["where"] = self.condition()
                break
            if token.word == "count":
                found["count"] = self.number_comparison(integer=True)
                continue
            self.take("=")
            found[token.word] = self.duration() if token.word in ("within", "recent", "earlier") else self.time()
        self.take(")")
        return found

    def number_comparison(self, *, integer: bool = False) -> tuple[str, int | float]:
        token = self.current
        if token.kind != "op" or token.text not in COMPARISONS:
            raise self.fail(f"a comparison ({', '.join(COMPARISONS)})")
        self.advance()
        number = self.current
        if number.kind != "number" or (integer and not re.fullmatch(r"\d+", number.text)):
            raise self.fail("a whole number" if integer else "a number")
        self.advance()
        value: int | float = float(number.text) if any(c in number.text for c in ".eE") else int(number.text)
        return token.text, value

    def time(self) -> date | datetime:
        token = self.current
        value = self.value()
        if not isinstance(value, date):
            raise ConditionError("expected a date such as 2026-01-31", token.position)
        return value


def _datetime(token: Token) -> datetime:
    try:
        value = datetime.fromisoformat(token.text.replace("Z", "+00:00"))
    except ValueError:
        raise ConditionError(f"{token.text} is not a date and time", token.position) from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _duration_option(options: dict[str, object], name: str) -> Duration:
    value = options[name]
    assert isinstance(value, Duration)
    return value


def _window(options: dict[str, object], *, with_within: bool = True) -> Window:
    within = options.get("within") if with_within else None
    start, end = options.get("from"), options.get("to")
    assert within is None or isinstance(within, Duration)
    assert start is None or isinstance(start, date)
    assert end is None or isinstance(end, date)
    return Window(within, start, end)


def _where(options: dict[str, object]) -> Condition | None:
    where = options.get("where")
    return where  # type: ignore[return-value]


def parse(text: str) -> Condition:
    """The condition a text says; ConditionError points at the first mistake and says what was expected."""
    if not text.strip():
        raise ConditionError("the condition is empty", 0)
    try:
        return Parser(text).parse()
    except RecursionError:  # hundreds of nested parentheses: the parser descends once per level
        raise ConditionError("the condition is nested too deeply", 0) from None


# -- printing ----------------------------------------------------------------------------------------------------
def to_text(condition: Condition) -> str:
    """The canonical text form."""
    if isinstance(condition, And | Or):
        joiner = " and " if isinstance(condition, And) else " or "
        return joiner.join(_grouped(item, condition) for item in condition.items)
    if isinstance(condition, Not):
        inner = to_text(condition.item)
        return f"not ({inner})" if isinstance(condition.item, And | Or | Not) else f"not {inner}"
    if isinstance(condition, Compare):
        return f"{condition.field} {_comparison_text(condition.op, condition.values)}"
    if isinstance(condition, InSegment):
        return f"in_segment({_string(condition.segment)})"
    if isinstance(condition, Consent):
        return f"consent({_string(condition.purpose)}) {condition.op} {condition.status}"
    if isinstance(condition, Sequence):
        args = [_string(condition.first), _string(condition.then), f"within = {condition.within}",
                *_window_args(condition.window)]
        return f"sequence({', '.join(args)})"
    return _event_text(condition)


def _event_text(condition: Condition) -> str:
    if isinstance(condition, Performed):
        args = [_string(condition.event)]
        if (condition.count_op, condition.count) != (">=", 1):
            args.append(f"count {condition.count_op} {condition.count}")
        args += [*_window_args(condition.window), *_where_args(condition.where)]
        return f"performed({', '.join(args)})"
    if isinstance(condition, EventTime):
        args = [_string(condition.event), *_where_args(condition.where)]
        return f"{condition.which}_time({', '.join(args)}) {_comparison_text(condition.op, condition.values)}"
    if isinstance(condition, Stopped):
        args = [_string(condition.event), f"recent = {condition.recent}", f"earlier = {condition.earlier}",
                *_where_args(condition.where)]
        return f"stopped({', '.join(args)})"
    assert isinstance(condition, Aggregate), condition
    args = [_string(condition.event), condition.prop, *_window_args(condition.window),
            *_where_args(condition.where)]
    return f"{condition.function}({', '.join(args)}) {condition.op} {_value(condition.value)}"


def _grouped(item: Condition, parent: And | Or) -> str:
    # An Or inside an And needs parentheses; so does a nested group of the same kind, to keep the tree exact.
    needs = isinstance(item, Or) or (isinstance(item, And) and isinstance(parent, And))
    return f"({to_text(item)})" if needs else to_text(item)


def _comparison_text(op: str, values: tuple[Value, ...]) -> str:
    if op in ("is set", "is not set"):
        return op
    if op in ("in", "not in", "contains any", "contains all"):
        return f"{op} ({', '.join(_value(v) for v in values)})"
    if op in ("between", "not between"):
        return f"{op} {_value(values[0])} and {_value(values[1])}"
    return f"{op} {_value(values[0])}"


def _window_args(window: Window) -> list[str]:
    args = [f"within = {window.within}"] if window.within else []
    if window.start is not None:
        args.append(f"from = {_value(window.start)}")
    if window.end is not None:
        args.append(f"to = {_value(window.end)}")
    return args


def _where_args(where: Condition | None) -> list[str]:
    return [] if where is None else [f"where {to_text(where)}"]


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Ago):
        return f"{value.duration} ago"
    return str(value)
