"""The generic config validator: a value checked against its ``mulo.hparams.Key`` (type, None, choices, bounds,
dict entries), a command-line string parsed for it, and the one-line error that names the key, the bad value and
what is accepted. Run-level keys (``mulo.app.config.SCHEMA``) and the components' section keys (their hyper-parameter
dataclasses, ``mulo.registry.section_keys``) are checked by the same functions."""

from __future__ import annotations

import ast
import difflib
import math
import re
from typing import Any, Iterable, Mapping

from mulo.errors import ConfigError
from mulo.hparams import POSITIVE, Key

INT_MAX = 2**31 - 1  # every integer fits int32 (step counters, PRNG seeds: JAX folds larger seeds to 32 bits)
MAX_STR = 4096  # longer strings are a pasted mistake, not a name or a path
# string keys where an empty (or blank) value means nothing sensible: a path "" is the working directory, a name ""
# names nothing (optional keys take none instead)
NON_EMPTY = ("output_dir", "data_dir", "fashion_mnist_dir", "tinyshakespeare_path", "vocab_path", "checkpoint",
             "init_theta", "wandb_checkpoint_id", "storage", "study_name", "wandb_project", "wandb_entity",
             "compilation_cache_dir", "coordinator_address", "cluster_detection_method")




def _range_text(spec: Key) -> str:
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        left = "(0" if lo == POSITIVE else f"[{lo:g}"
        return f" in {left}, {hi:g}{')' if spec.below_max else ']'}"
    if lo is not None:
        return " > 0" if lo == POSITIVE else f" >= {lo:g}"
    if hi is not None:
        return f" < {hi:g}" if spec.below_max else f" <= {hi:g}"
    return ""


def _accepted(spec: Key) -> str:
    if spec.choices:
        text = "one of " + ", ".join(map(str, spec.choices))
    else:
        text = {"list[str]": "a comma-separated list of strings", "list[int]": "a comma-separated list of integers",
                "list[float]": "a comma-separated list of numbers", "dict": "a dict (use --cfg-options key.sub=value)",
                "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[spec.type]
        text += _range_text(spec)
    if spec.optional:
        text += " (or None)"
    return text


def suggest(name: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for a near-miss, else ''."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def short(value: Any) -> str:
    """A value as one short line: its repr (quotes strings, escapes newlines, control characters and surrogates)."""
    return clip(repr(value))


def key_text(text: Any) -> str:
    """A key name as typed, on one line (escaped like a repr, without the quotes)."""
    return clip(repr(str(text))[1:-1])


def bad(name: str, spec: Key, value: Any, why: str = "") -> ConfigError:
    return ConfigError(f"bad value {short(value)} for config key '{name}': expected {_accepted(spec)}{why}")




def _check_scalar(name: str, spec: Key, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad(name, spec, value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise bad(name, spec, value)
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                raise bad(name, spec, value) from None
        raise bad(name, spec, value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad(name, spec, value)
    raise AssertionError(f"unknown schema type {kind}")


def to_plain(value: Any) -> Any:
    """MMEngine ConfigDict/list -> plain dict/list, recursively."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def check(name: str, spec: Key, value: Any) -> Any:
    """``value`` checked against ``spec`` and normalised (int -> float, "a,b" -> [a, b]); ``name`` is the (dotted) key
    shown in errors."""
    if value is None:
        if spec.optional:
            return None
        raise bad(name, spec, value)
    if spec.type == "dict":
        if not isinstance(value, Mapping):
            raise bad(name, spec, value)
        plain = to_plain(value)
        if spec.fields is None:
            return plain
        out = {}
        for entry, v in plain.items():
            if entry not in spec.fields:
                raise ConfigError(f"unknown entry '{key_text(entry)}' of config key '{name}'"
                                  f"{suggest(str(entry), spec.fields)}: expected {', '.join(spec.fields)}")
            out[entry] = check(f"{name}.{entry}", spec.fields[entry], v)
        return out
    if spec.type.startswith("list["):
        inner = spec.type[5:-1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            if inner != "str":
                try:
                    value = [_parse_scalar(name, spec, inner, v) for v in value]
                except ConfigError:
                    raise bad(name, spec, ",".join(value)) from None
        if not isinstance(value, (list, tuple)) or not value:
            raise bad(name, spec, value)
        out = [_check_scalar(name, spec, inner, v) for v in value]
        for v in out:
            _check_range(name, spec, v, value)
        return out
    out = _check_scalar(name, spec, spec.type, value)
    _check_range(name, spec, out, value)
    return out


def _check_range(name: str, spec: Key, v: Any, shown: Any) -> None:
    if spec.choices is not None and v not in spec.choices:
        raise bad(name, spec, shown, suggest(str(v), map(str, spec.choices)))
    if isinstance(v, float) and not math.isfinite(v):
        raise bad(name, spec, shown, " (NaN and inf are not accepted)")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if spec.min is not None and v < spec.min:
            raise bad(name, spec, shown)
        if spec.max is not None and (v >= spec.max if spec.below_max else v > spec.max):
            raise bad(name, spec, shown)
        if isinstance(v, int) and abs(v) > INT_MAX:
            raise bad(name, spec, shown, f" (at most {INT_MAX})")
    if isinstance(v, str):
        if name in NON_EMPTY and not v.strip():
            raise bad(name, spec, shown, " (not empty" + ("; none for no value)" if spec.optional else ")"))
        if len(v) > MAX_STR:
            raise bad(name, spec, shown, f" (at most {MAX_STR} characters)")
        if "\x00" in v:
            raise bad(name, spec, shown, " (without NUL characters)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(name, spec, shown, " (valid UTF-8)") from None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_scalar(name: str, spec: Key, kind: str, text: str) -> Any:
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind in ("int", "float") and not text.isascii():  # int() and float() read '١٢' and '１２' as 12
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return text
    except ValueError:
        raise bad(name, spec, text) from None


_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except _LITERAL_ERRORS:
        return text


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$", re.ASCII)  # a host name or IPv4 address


def check_host_port(key: str, text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets, ``[::1]:1234``) with a port in 1..65535, else a one-line ConfigError."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad value {short(text)} for config key '{key}': expected host:port (IPv6 as "
                           f"[addr]:port) with a port in 1..65535; {why}")

    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise bad("no ':port'" if not colon else "no host")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise bad(f"port {clip(port)!r}")
    if host.startswith("[") or host.endswith("]"):
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1] if host.startswith("[") and host.endswith("]") else "?")
        except ValueError:
            raise bad(f"host {clip(host)!r} is not a bracketed IPv6 address") from None
    elif not _HOST.match(host):
        raise bad(f"host {clip(host)!r} is not a host name or address")
    return host, int(port)


def parse_text(name: str, spec: Key, text: str) -> Any:
    """The string given on the command line for the key ``name`` (``spec``), parsed and checked."""
    if spec.optional and text.strip().lower() in ("none", "null"):
        return None
    if spec.type == "dict":
        try:
            value = ast.literal_eval(text)
        except _LITERAL_ERRORS:
            raise bad(name, spec, text) from None
        return check(name, spec, value)
    if spec.type.startswith("list["):
        return check(name, spec, text)
    return check(name, spec, _parse_scalar(name, spec, spec.type, text))
