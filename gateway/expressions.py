"""Arithmetic over point values, for computed points: parsed once, never ``eval``-ed.

An expression is a Python expression restricted to numbers, names, ``+ - * / // % **``,
comparisons, ``and``/``or``/``not``, ``a if cond else b`` and the functions in `FUNCTIONS`.
A plain name is a point of the same device (``outlet_kpa``); a dotted name reads the device's
shadow (``shadow.reported.inlet_kpa``, ``shadow.desired.speed``). Anything else (attributes of
other objects, subscripts, calls of other names, lambdas, comprehensions) is refused when the
config is loaded, with the reason, so a config can never run arbitrary code.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Expression", "ExpressionError", "FUNCTIONS", "compile_expression"]

Number = float | int | bool
Env = Callable[[str], Number]  # a name -> its value; raises KeyError when it has none

FUNCTIONS: Mapping[str, Callable[..., Number]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
}
_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    # In floats: Python's int ** int is exact, so 9 ** 9 ** 9 would compute for hours on the
    # event loop; a float power overflows at once (OverflowError, the point is skipped), and a
    # negative base with a fractional power is an error instead of a complex number.
    ast.Pow: math.pow,
}
_COMPARE: Mapping[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
SHADOW_SECTIONS = ("reported", "desired")


class ExpressionError(ValueError):
    """The expression is not allowed or does not parse; the message says why."""


@dataclass(frozen=True)
class Expression:
    text: str
    points: frozenset[str]  # plain names: points of the device
    shadow: frozenset[str]  # "reported.x" / "desired.x"
    _fn: Callable[[Env], Number]

    def __call__(self, env: Env) -> Number:
        return self._fn(env)


def compile_expression(text: str) -> Expression:
    """Parse ``text`` into an `Expression`; `ExpressionError` if it is not allowed."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an expression: {exc.msg}") from None
    points: set[str] = set()
    shadow: set[str] = set()
    fn = _compile(tree.body, points, shadow)
    return Expression(text, frozenset(points), frozenset(shadow), fn)


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _compile(node: ast.expr, points: set[str], shadow: set[str]) -> Callable[[Env], Number]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        value = node.value
        return lambda env: value
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{node.id} is a function: call it, {node.id}(...)")
        points.add(node.id)
        name = node.id
        return lambda env: env(name)
    if isinstance(node, ast.Attribute):
        parts = _dotted(node)
        if parts is None or len(parts) != 3 or parts[0] != "shadow":
            raise ExpressionError(
                f"{ast.unparse(node)}: only shadow.reported.<key> or shadow.desired.<key>"
            )
        if parts[1] not in SHADOW_SECTIONS:
            raise ExpressionError(f"{ast.unparse(node)}: shadow has reported and desired")
        key = f"{parts[1]}.{parts[2]}"
        shadow.add(key)
        return lambda env: env("shadow." + key)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, points, shadow), _compile(node.right, points, shadow)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        inner = _compile(node.operand, points, shadow)
        if isinstance(node.op, ast.USub):
            return lambda env: -inner(env)
        if isinstance(node.op, ast.Not):
            return lambda env: not inner(env)
        return inner
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
        first = _compile(node.left, points, shadow)
        rest = [
            (_COMPARE[type(o)], _compile(c, points, shadow))
            for o, c in zip(node.ops, node.comparators, strict=True)
        ]

        def compare(env: Env) -> bool:
            a = first(env)
            for op, nxt in rest:
                b = nxt(env)
                if not op(a, b):
                    return False
                a = b
            return True

        return compare
    if isinstance(node, ast.BoolOp):
        operands = [_compile(v, points, shadow) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda env: all(o(env) for o in operands)
        return lambda env: any(o(env) for o in operands)
    if isinstance(node, ast.IfExp):
        test = _compile(node.test, points, shadow)
        yes, no = _compile(node.body, points, shadow), _compile(node.orelse, points, shadow)
        return lambda env: yes(env) if test(env) else no(env)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = FUNCTIONS.get(node.func.id)
        if fn is None:
            allowed = ", ".join(FUNCTIONS)
            raise ExpressionError(f"unknown function {node.func.id}(); allowed: {allowed}")
        args = [_compile(a, points, shadow) for a in node.args]
        return lambda env: fn(*(a(env) for a in args))
    raise ExpressionError(f"{ast.unparse(node)!r} is not allowed in a computed point")
