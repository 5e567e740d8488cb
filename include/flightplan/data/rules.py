"""A label rule, a Spark SQL expression, evaluated on an Arrow table with Spark's results (ANSI mode, the session
in UTC), for the part of the language rules use: columns, literals, arithmetic, comparisons, AND, OR, NOT,
IS [NOT] NULL, [NOT] IN, [NOT] BETWEEN, CASE WHEN, COALESCE and CAST to INT, BIGINT, DOUBLE, STRING or BOOLEAN.

Anything else (another function, a type Spark would coerce its own way, such as an integer times a decimal
literal) raises ``Unsupported``: the stage then runs on Spark, which reads the whole language."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


class Unsupported(ValueError):
    """The rule uses what this evaluator does not do as Spark does."""


TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<string>'(?:[^'\\]|\\.)*')|(?P<quoted>`(?:[^`]|``)*`)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<symbol><=>|<=|>=|<>|!=|==|[=<>+\-*/%(),]))"
)
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": pc.equal, "==": pc.equal, "<>": pc.not_equal, "!=": pc.not_equal,
    "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
}  # fmt: skip
ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": pc.add_checked, "-": pc.subtract_checked, "*": pc.multiply_checked,
}  # fmt: skip
CASTS = {"INT": pa.int32(), "INTEGER": pa.int32(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "STRING": pa.string(),
         "BOOLEAN": pa.bool_()}  # fmt: skip
INT32_RANGE = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Value:
    """An evaluated term: an array of the table's length; whether it is a decimal literal (Spark types those
    DECIMAL, which mixes with integers its own way); a string literal's text (Spark reads it as a time beside
    one)."""

    array: pa.Array
    decimal: bool = False
    text: str | None = None  # a string literal's

    @property
    def type(self) -> pa.DataType:
        return self.array.type


def evaluate(rule: str, table: pa.Table) -> pa.Array:
    """The rule's value for each row of ``table``."""
    parser = Parser(tokens(rule), table)
    value = parser.expression()
    if parser.position != len(parser.tokens):
        raise Unsupported(f"unexpected {parser.tokens[parser.position][1]!r} in {rule!r}")
    return value.array


def tokens(rule: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(rule.rstrip()):
        match = TOKEN.match(rule, position)
        if match is None or match.lastgroup is None:
            raise Unsupported(f"cannot read {rule[position : position + 20]!r}")
        kind = match.lastgroup
        text = match.group(kind)
        found.append((kind, text.upper() if kind == "word" else text))
        position = match.end()
    return found


class Parser:
    """Recursive descent over the tokens, evaluating as it goes, with Spark's precedence: OR, AND, NOT, the
    predicates, + and -, * and /, the unary minus."""

    def __init__(self, found: list[tuple[str, str]], table: pa.Table) -> None:
        self.tokens, self.table, self.position = found, table, 0

    def peek(self, *texts: str) -> bool:
        return self.position < len(self.tokens) and self.tokens[self.position][1] in texts

    def take(self, *texts: str) -> str:
        if not self.peek(*texts):
            seen = self.tokens[self.position][1] if self.position < len(self.tokens) else "the end"
            raise Unsupported(f"expected {' or '.join(texts)}, not {seen!r}")
        self.position += 1
        return self.tokens[self.position - 1][1]

    def expression(self) -> Value:
        value = self.conjunction()
        while self.peek("OR"):
            self.take("OR")
            value = Value(pc.or_kleene(boolean(value), boolean(self.conjunction())))
        return value

    def conjunction(self) -> Value:
        value = self.negation()
        while self.peek("AND"):
            self.take("AND")
            value = Value(pc.and_kleene(boolean(value), boolean(self.negation())))
        return value

    def negation(self) -> Value:
        if self.peek("NOT"):
            self.take("NOT")
            return Value(pc.invert(boolean(self.negation())))
        return self.predicate()

    def predicate(self) -> Value:
        left = self.additive()
        if self.peek(*COMPARISONS):
            operator = self.take(*COMPARISONS)
            return compare(COMPARISONS[operator], left, self.additive())
        if self.peek("IS"):
            self.take("IS")
            negated = self.peek("NOT") and bool(self.take("NOT"))
            self.take("NULL")
            return Value(pc.is_valid(left.array) if negated else pc.is_null(left.array))
        negated = self.peek("NOT") and bool(self.take("NOT"))
        if self.peek("BETWEEN"):
            self.take("BETWEEN")
            low = self.additive()
            self.take("AND")
            high = self.additive()
            within = pc.and_kleene(compare(pc.greater_equal, left, low).array, compare(pc.less_equal, left, high).array)
            return Value(pc.invert(within) if negated else within)
        if self.peek("IN"):
            found = self.membership(left)
            return Value(pc.invert(found) if negated else found)
        if negated:
            raise Unsupported("NOT must come before a predicate here")
        return left

    def membership(self, left: Value) -> pa.Array:
        """``left IN (...)``: null for a null ``left``, as Spark's."""
        self.take("IN")
        self.take("(")
        items = [self.additive()]
        while self.peek(","):
            self.take(",")
            items.append(self.additive())
        self.take(")")
        found = pa.array([False] * len(left.array))
        for item in items:
            found = pc.or_kleene(found, compare(pc.equal, left, item).array)
        return found

    def additive(self) -> Value:
        value = self.multiplicative()
        while self.peek("+", "-"):
            value = arithmetic(self.take("+", "-"), value, self.multiplicative())
        return value

    def multiplicative(self) -> Value:
        value = self.unary()
        while self.peek("*", "/"):
            value = arithmetic(self.take("*", "/"), value, self.unary())
        return value

    def unary(self) -> Value:
        if self.peek("-"):
            self.take("-")
            value = self.unary()
            return Value(pc.negate_checked(numeric(value).array), value.decimal)
        return self.primary()

    def primary(self) -> Value:
        if self.position >= len(self.tokens):
            raise Unsupported("the rule ends early")
        kind, text = self.tokens[self.position]
        if kind in ("number", "string"):
            self.position += 1
            return self.literal(kind, text)
        if kind == "quoted":
            self.position += 1
            return self.column(text[1:-1].replace("``", "`"))
        if text == "(":
            self.take("(")
            value = self.expression()
            self.take(")")
            return value
        if kind == "word":
            return self.word(text)
        raise Unsupported(f"unexpected {text!r}")

    def word(self, text: str) -> Value:
        """A keyword that starts a term, or a column named without backquotes."""
        constants = {"TRUE": pa.scalar(True), "FALSE": pa.scalar(False), "NULL": pa.scalar(None, pa.null())}
        if text in constants:
            self.position += 1
            return Value(pa.repeat(constants[text], self.table.num_rows))
        if text == "CASE":
            return self.case()
        if text == "CAST":
            return self.cast()
        if text == "COALESCE":
            self.take("COALESCE")
            return Value(pc.coalesce(*common(self.arguments())))
        self.position += 1
        if self.peek("("):
            raise Unsupported(f"function {text}")
        return self.column(self.tokens[self.position - 1][1])

    def arguments(self) -> list[Value]:
        self.take("(")
        values = [self.expression()]
        while self.peek(","):
            self.take(",")
            values.append(self.expression())
        self.take(")")
        return values

    def literal(self, kind: str, text: str) -> Value:
        rows = self.table.num_rows
        if kind == "string":
            if re.search(r"\\[^'\\]", text):  # Spark reads \n, \t, \u0041... its own way
                raise Unsupported(f"the escapes of {text}")
            unescaped = re.sub(r"\\(.)", r"\1", text[1:-1])
            return Value(pa.repeat(pa.scalar(unescaped), rows), text=unescaped)
        if re.fullmatch(r"\d+", text):
            number = int(text)
            fits = INT32_RANGE[0] <= number <= INT32_RANGE[1]
            return Value(pa.repeat(pa.scalar(number, pa.int32() if fits else pa.int64()), rows))
        return Value(pa.repeat(pa.scalar(float(text)), rows), decimal="e" not in text.lower())

    def column(self, name: str) -> Value:
        """A column by its name in any case, as Spark resolves names."""
        found = [n for n in self.table.column_names if n.upper() == name.upper()]
        if len(found) != 1:
            raise Unsupported(f"{len(found)} columns named {name!r}")
        return Value(self.table.column(found[0]).combine_chunks())

    def case(self) -> Value:
        self.take("CASE")
        conditions, values = [], []
        while self.peek("WHEN"):
            self.take("WHEN")
            conditions.append(pc.fill_null(boolean(self.expression()), False))  # a null condition is not met
            self.take("THEN")
            values.append(self.expression())
        if not conditions:
            raise Unsupported("CASE without WHEN (or CASE on a value)")
        otherwise = self.expression() if self.peek("ELSE") and self.take("ELSE") else None
        self.take("END")
        typed = common([*values, otherwise] if otherwise else values)
        if otherwise is None:
            typed.append(pa.nulls(self.table.num_rows, typed[0].type))
        names = [f"c{i}" for i in range(len(conditions))]
        return Value(pc.case_when(pa.StructArray.from_arrays(conditions, names), *typed))

    def cast(self) -> Value:
        self.take("CAST")
        self.take("(")
        value = self.expression()
        self.take("AS")
        target = self.take(*CASTS)
        self.take(")")
        return Value(cast(value, CASTS[target]))


def boolean(value: Value) -> pa.Array:
    if not (pa.types.is_boolean(value.type) or pa.types.is_null(value.type)):
        raise Unsupported(f"a {value.type} where Spark wants a boolean")
    return value.array.cast(pa.bool_())


def numeric(value: Value) -> Value:
    if not (pa.types.is_integer(value.type) or pa.types.is_floating(value.type)):
        raise Unsupported(f"arithmetic on a {value.type}")
    return value


def arithmetic(operator: str, left: Value, right: Value) -> Value:
    """Spark's result: ``/`` always a double (a zero divisor an error, as in ANSI mode); +, - and * keep the
    integer type (an overflow an error) and make a double of a double. An integer with a decimal literal, or two
    decimal literals, Spark computes as DECIMAL: not done here."""
    numeric(left), numeric(right)
    if (left.decimal or right.decimal) and not (is_double(left) or is_double(right)):
        raise Unsupported("arithmetic on a decimal literal and an integer")
    if operator == "/":
        divisor = right.array.cast(pa.float64())
        if pc.any(pc.equal(divisor, 0.0)).as_py():
            raise ZeroDivisionError("division by zero in the label rule (Spark's ANSI mode fails the same way)")
        return Value(pc.divide(left.array.cast(pa.float64()), divisor))
    return Value(ARITHMETIC[operator](left.array, right.array))


def is_double(value: Value) -> bool:
    return pa.types.is_floating(value.type) and not value.decimal


def compare(operator: Callable[[Any, Any], Any], left: Value, right: Value) -> Value:
    """Two terms compared as Spark coerces them: numbers with numbers, strings with strings, a date or a
    timestamp with one of its kind or with a string (read as one)."""
    a, b = left.array, right.array
    if pa.types.is_null(a.type) or pa.types.is_null(b.type):  # NULL compared with anything is null
        return Value(pa.nulls(len(a), pa.bool_()))
    if pa.types.is_temporal(a.type) and pa.types.is_string(b.type):
        b = as_time(right, a.type)
    elif pa.types.is_string(a.type) and pa.types.is_temporal(b.type):
        a = as_time(left, b.type)
    kinds = {kind_of(a.type), kind_of(b.type)} - {"null"}
    if len(kinds) > 1 or (kinds == {"temporal"} and a.type != b.type):
        raise Unsupported(f"comparing a {a.type} with a {b.type}")
    if not (pa.types.is_floating(a.type) or pa.types.is_floating(b.type)):
        return Value(operator(a, b))
    # Spark orders NaN above every other number and equal to itself, where IEEE (Arrow) makes it unordered.
    a_nan, b_nan = not_a_number(a), not_a_number(b)
    nan_order = operator(a_nan.cast(pa.int8()), b_nan.cast(pa.int8()))
    return Value(pc.if_else(pc.or_(a_nan, b_nan), nan_order, operator(a, b)))


def as_time(value: Value, kind: pa.DataType) -> pa.Array:
    """A string literal read as a date or a timestamp of the session's zone (UTC), as Spark reads one beside a
    time; one with a zone of its own, or in a form Arrow does not read, is left to Spark."""
    if value.text is None:
        raise Unsupported("a time compared with a string column")
    try:
        if pa.types.is_timestamp(kind):
            moment = pa.array([value.text]).cast(pa.timestamp(kind.unit))
            moment = pc.assume_timezone(moment, kind.tz) if kind.tz else moment
        else:
            moment = pa.array([value.text]).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise Unsupported(f"the time {value.text!r}: {err}") from err
    return pa.repeat(moment[0].cast(kind), len(value.array))


def not_a_number(values: pa.Array) -> pa.Array:
    """Whether each value is NaN (null for a null one); never for a type without NaN."""
    if pa.types.is_floating(values.type):
        return pc.is_nan(values)
    return pc.and_(pc.is_valid(values), pa.scalar(False))


def kind_of(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if pa.types.is_temporal(kind):
        return "temporal"
    return "null" if pa.types.is_null(kind) else str(kind)


def common(values: list[Value]) -> list[pa.Array]:
    """The values in the one type Spark gives them together (CASE's branches, COALESCE's arguments)."""
    kinds = [v.type for v in values if not pa.types.is_null(v.type)]
    if not kinds:
        return [v.array for v in values]
    if all(kind == kinds[0] for kind in kinds):
        target = kinds[0]
    elif all(pa.types.is_integer(kind) for kind in kinds):
        target = pa.int64()
    elif all(kind_of(kind) == "number" for kind in kinds) and not any(v.decimal for v in values):
        target = pa.float64()
    else:
        raise Unsupported(f"branches of types {sorted(set(map(str, kinds)))}")
    if any(v.decimal for v in values) and not pa.types.is_floating(target):
        raise Unsupported("a decimal literal among the branches")
    return [v.array.cast(target) for v in values]


def cast(value: Value, target: pa.DataType) -> pa.Array:
    """Spark's CAST for the types rules use: a double to an integer drops its fraction, an overflow is an error."""
    source = value.type
    if pa.types.is_null(source) or source == target:
        return value.array.cast(target)
    if pa.types.is_integer(target) and (pa.types.is_integer(source) or pa.types.is_boolean(source)):
        return value.array.cast(target)
    if pa.types.is_integer(target) and pa.types.is_floating(source) and not value.decimal:
        return pc.trunc(value.array).cast(target)
    if pa.types.is_floating(target) and (pa.types.is_integer(source) or pa.types.is_floating(source)):
        return value.array.cast(target)
    if pa.types.is_string(target) and (pa.types.is_integer(source) or pa.types.is_boolean(source)):
        return value.array.cast(target)
    raise Unsupported(f"CAST of a {source} to {target}")
