"""Hyper-parameter dataclasses: how a component (a learned or hand-designed optimizer, an estimator, a truncation
schedule) declares the keys of its config section, once, beside its code.

    @dataclass(frozen=True)
    class AdamHParams:
        learning_rate: float = hparam(1e-3, "learning rate", min=POSITIVE)
        b1: float = hparam(0.9, "Adam beta1", min=0.0, max=1.0, below_max=True)

``section_schema(AdamHParams)`` -> ``{"learning_rate": Key("float", ...), "b1": Key("float", ...)}``: the config
validator checks a section's values against it and ``--help`` prints it. The Key's type comes from the field's
annotation (``int``, ``float``, ``bool``, ``str``, ``list[int]``, ...; ``X | None`` makes it optional) unless
``hparam`` is given ``type=``. Fields declared without ``hparam()`` are fixed by the component (e.g. an LO's decay
tuples): they are not config keys.

This module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from mulo.errors import ConfigError

POSITIVE = 1e-300  # "strictly positive" lower bound for floats (error lines say "> 0")
_META = "mulo.hparam"  # the dataclasses.field metadata entry that holds a field's Key arguments


@dataclass(frozen=True)
class Key:
    """One config key: its type, whether None is allowed, accepted values, bounds and help. A dict key may declare
    its entries (``fields``), which are validated the same way (each entry optional, unknown entries rejected)."""

    type: str  # int | float | str | bool | dict | list[str] | list[int] | list[float]
    help: str
    optional: bool = False
    choices: tuple | None = None  # or a sequence resolved when read (mulo.registry.LazyNames)
    min: float | None = None
    max: float | None = None  # inclusive, or exclusive with below_max
    below_max: bool = False
    fields: Mapping[str, "Key"] | None = None


def hparam(default: Any, help: str, **key_kwargs: Any) -> Any:
    """A dataclass field with ``default`` that is a config key: ``help`` and the other ``Key`` arguments
    (``choices``, ``min``, ``max``, ``below_max``, ``optional``, ``type``) go into the field's metadata."""
    unknown = set(key_kwargs) - {f.name for f in dataclasses.fields(Key)}
    if unknown:
        raise TypeError(f"hparam() got unknown Key argument(s) {sorted(unknown)}")
    return dataclasses.field(default=default, metadata={_META: {"help": help, **key_kwargs}})


_SCALARS = {int: "int", float: "float", bool: "bool", str: "str"}


def _key_type(annotation: Any) -> tuple[str, bool]:
    """(Key type, optional) of a resolved annotation: int, float | None, list[int], tuple[float, ...], ..."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"cannot derive a config key type from {annotation!r}: give hparam(type=...)")
        return _key_type(inner[0])[0], type(None) in args
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    if typing.get_origin(annotation) in (list, tuple) and args and args[0] in _SCALARS:
        return f"list[{_SCALARS[args[0]]}]", False
    raise TypeError(f"cannot derive a config key type from {annotation!r}: give hparam(type=...)")


def section_schema(cls: type) -> dict[str, Key]:
    """The config keys of a hyper-parameter dataclass: one ``Key`` per field declared with ``hparam()``, in field
    order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        meta = dict(meta)
        if "type" not in meta:
            meta["type"], optional = _key_type(hints[f.name])
            meta["optional"] = meta.get("optional", False) or optional
        out[f.name] = Key(**meta)
    return out


def field_defaults(cls: type) -> dict[str, Any]:
    """The defaults of the config keys of ``cls`` (the fields declared with ``hparam()``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: fields[name].default for name in section_schema(cls)}


def make_hparams(cls: type, values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Any:
    """An instance of ``cls`` from a section's (validated) ``values`` over ``overrides`` (a registered name's own
    defaults). A None for a key that is not optional means "the default" (run configs of older versions wrote
    ``adafac_step_mult = None``); lists become tuples; an unknown key is one ConfigError line naming the known ones."""
    schema = section_schema(cls)
    unknown = set(values) - set(schema)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} for {cls.__name__}; expected some "
                          f"of {', '.join(schema)}")
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
             if not (v is None and not schema[k].optional)}
    return cls(**{**(overrides or {}), **given})


class HParamsDict:
    """``to_dict`` / ``from_dict`` of a frozen hyper-parameter dataclass as stored in θ files (JSON): tuples of decays
    as lists, unknown entries refused with one line naming the ``KIND`` of LO."""

    KIND = "LO"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} hyper-parameter(s) {sorted(unknown)}; expected some of "
                              f"{sorted(known)}")
        return cls(**{k: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})
