"""A small JSON-schema subset, enough for the request bodies of the two VMM APIs.

A schema is a dict: `type` ("object", "array", "string", "integer", "number", "boolean"),
`properties`, `required`, `additionalProperties` (unknown fields are refused unless it is
true), `enum`, `minimum`/`maximum`, `format` (integer widths such as "uint8" bound the value),
`items`, `minLength`, or `{"$ref": "Name"}` naming an entry of the definitions.

Errors read like serde's (both VMMs deserialize with serde), with the field's place appended
when it is nested: "unknown field `x`, expected one of `a`, `b` (at `drives[0]`)".
"""

from __future__ import annotations

from typing import Any

#: The bounds an integer `format` implies.
FORMAT_BOUNDS = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}

#: How serde names what it expected, per schema type.
EXPECTED = {
    "object": "a map",
    "array": "a sequence",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
}


class SchemaError(ValueError):
    """A body that does not match its schema; `where` is the field's place ("" at the top)."""

    def __init__(self, message: str, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(f"{message} (at `{where}`)" if where else message)


class UnknownDefinition(KeyError):
    """A `$ref` to a name the definitions do not hold: a defect in a spec table."""


def describe(value: Any) -> str:
    """A JSON value as serde names it in an "invalid type" error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "sequence"
    return "map"


def one_of(names: list[str]) -> str:
    quoted = ", ".join(f"`{n}`" for n in names)
    if not names:
        return "there are no fields"
    return f"expected one of {quoted}" if len(names) > 1 else f"expected {quoted}"


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise ValueError(f"unknown schema type {kind!r}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def resolve(schema: dict, definitions: dict[str, dict]) -> dict:
    """Follows `$ref`s to the schema they name."""
    while "$ref" in schema:
        name = schema["$ref"]
        if name not in definitions:
            raise UnknownDefinition(name)
        schema = definitions[name]
    return schema


def validate(value: Any, schema: dict, definitions: dict[str, dict], where: str = "") -> None:
    """Raises SchemaError naming the first thing in `value` that `schema` refuses."""
    schema = resolve(schema, definitions)
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        raise SchemaError(f"invalid type: {describe(value)}, expected {EXPECTED[kind]}", where)
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"unknown variant `{value}`, {one_of(schema['enum'])}", where)
    if kind in ("integer", "number"):
        _check_bounds(value, schema, where)
    if kind == "string" and len(value) < schema.get("minLength", 0):
        raise SchemaError(
            f"invalid value: string {value!r}, expected at least {schema['minLength']} characters",
            where,
        )
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            validate(item, schema["items"], definitions, f"{where}[{index}]")
    if kind == "object":
        _validate_object(value, schema, definitions, where)


def _check_bounds(value: int | float, schema: dict, where: str) -> None:
    low, high = FORMAT_BOUNDS.get(schema.get("format", ""), (None, None))
    low = schema.get("minimum", low)
    high = schema.get("maximum", high)
    if low is not None and value < low:
        raise SchemaError(f"invalid value: integer `{value}`, expected at least {low}", where)
    if high is not None and value > high:
        raise SchemaError(f"invalid value: integer `{value}`, expected at most {high}", where)


def _validate_object(value: dict, schema: dict, definitions: dict, where: str) -> None:
    properties: dict[str, dict] = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    for name, item in value.items():
        if name in properties:
            validate(item, properties[name], definitions, _join(where, name))
        elif isinstance(extra, dict):
            validate(item, extra, definitions, _join(where, name))
        elif extra is not True:
            raise SchemaError(f"unknown field `{name}`, {one_of(list(properties))}", where)
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaError(f"missing field `{name}`", where)


def check_definitions(definitions: dict[str, dict]) -> None:
    """Raises UnknownDefinition for a `$ref` anywhere in `definitions` that names nothing."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"] not in definitions:
                raise UnknownDefinition(node["$ref"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(definitions)


# Helpers for writing the spec tables compactly.
STRING: dict = {"type": "string"}
BOOLEAN: dict = {"type": "boolean"}
INTEGER: dict = {"type": "integer"}


def integer(fmt: str | None = None, minimum: int | None = None, maximum: int | None = None):
    out: dict = {"type": "integer"}
    if fmt:
        out["format"] = fmt
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def ref(name: str) -> dict:
    return {"$ref": name}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


def obj(required: tuple[str, ...] = (), extra: bool = False, **properties: dict) -> dict:
    """An object schema; a property named with a trailing `_` loses it (for Python keywords),
    and `__` stands for `-` (Firecracker's `boot-source` and friends)."""
    props = {name.rstrip("_").replace("__", "-"): value for name, value in properties.items()}
    out: dict = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if extra:
        out["additionalProperties"] = True
    return out
