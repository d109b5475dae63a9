"""One validation mechanism for every configuration dataclass (run config sections, SACConfig).

A configuration class is a frozen dataclass that inherits :class:`Validated` and names its key
prefix (``agent``, ``train``, ...). On construction every field is checked against its type
annotation (ints are accepted for floats, lists for tuples, mappings for nested config classes),
then the class's own ``check()`` runs the value rules. Every failure is a :class:`ConfigError`
whose message starts with the full key, e.g. ``agent.gamma: must lie in [0, 1]``.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation and return it in the annotated form."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if typing.get_origin(annotation) is typing.Literal:
        allowed = typing.get_args(annotation)
        check(value in allowed and type(value) in {type(a) for a in allowed}, key,
              f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return build(annotation, value, key)
    if annotation is Any:
        return value
    if annotation is bool:
        check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        check(_is_int(value), key, f"expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        check(_is_number(value), key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def build(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build config class ``cls`` from a mapping, naming unknown keys (``prefix.key``)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {values!r}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}.{unknown[0]} "
                          f"(valid keys in '{prefix}': {', '.join(sorted(fields))})")
    if issubclass(cls, Validated):
        return cls(**dict(values))  # its __post_init__ coerces and checks
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()})


class Validated:
    """Mixin for frozen config dataclasses: fields coerced to their annotations, then ``check()``.

    ``PREFIX`` is the key prefix named in errors (``agent`` gives ``agent.gamma: ...``).
    """

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = coerce(getattr(self, field.name), hints[field.name], self.key(field.name))
            object.__setattr__(self, field.name, value)
        self.check()

    def key(self, name: str) -> str:
        """The full config key of field ``name``."""
        return f"{self.PREFIX}.{name}" if self.PREFIX else name

    def require(self, ok: bool, name: str, message: str) -> None:
        """Raise a ConfigError naming field ``name`` unless ``ok``."""
        check(ok, self.key(name), message)

    def check(self) -> None:
        """Value rules beyond the types; subclasses override."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Any:
        """Build from a plain mapping (YAML); unknown keys raise ConfigError naming them."""
        return build(cls, values, cls.PREFIX)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists, nested configs dicts) for YAML/JSON."""
        return plain(dataclasses.asdict(self))  # type: ignore[call-overload]


def plain(value: Any) -> Any:
    """Tuples become lists so that YAML round-trips with safe_load."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
