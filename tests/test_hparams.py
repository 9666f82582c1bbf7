"""mulo.hparams: a component's hyper-parameter dataclass declares its config section (types from the annotations,
help, bounds, choices), and the registry's sections read it (mulo.registry.component / names / section_keys)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mulo import registry
from mulo.errors import ConfigError
from mulo.hparams import POSITIVE, HParamsDict, Key, field_defaults, hparam, make_hparams, section_schema


@dataclass(frozen=True)
class _HP(HParamsDict):
    rate: float = hparam(0.1, "a rate", min=POSITIVE)
    size: int = hparam(4, "a size", min=1)
    mode: str = hparam("a", "a mode", choices=("a", "b"))
    cap: float | None = hparam(None, "an optional cap")
    widths: tuple[int, ...] = hparam((1, 2), "widths")
    decays: tuple[float, ...] = (0.9, 0.99)  # fixed by the component: not a config key


def test_section_schema_reads_types_help_and_bounds_from_the_fields():
    schema = section_schema(_HP)
    assert list(schema) == ["rate", "size", "mode", "cap", "widths"]
    assert schema["rate"] == Key("float", "a rate", min=POSITIVE)
    assert schema["size"] == Key("int", "a size", min=1)
    assert schema["mode"] == Key("str", "a mode", choices=("a", "b"))
    assert schema["cap"] == Key("float", "an optional cap", optional=True)
    assert schema["widths"].type == "list[int]"
    assert field_defaults(_HP) == {"rate": 0.1, "size": 4, "mode": "a", "cap": None, "widths": (1, 2)}


def test_make_hparams_fills_defaults_overrides_and_refuses_unknown_keys():
    hp = make_hparams(_HP, {"size": 8, "widths": [3], "rate": None}, overrides={"rate": 0.5})
    assert hp == _HP(rate=0.5, size=8, widths=(3,))  # None for a non-optional key: the (overridden) default
    assert make_hparams(_HP, {"cap": None}).cap is None
    with pytest.raises(ConfigError, match="unknown key.*sise.*expected some of rate, size, mode, cap, widths"):
        make_hparams(_HP, {"sise": 8})
    with pytest.raises(TypeError):
        hparam(1, "x", bogus=1)


def test_hparams_dict_round_trip_as_in_theta_files():
    hp = _HP(widths=(5,))
    d = hp.to_dict()
    assert d["decays"] == [0.9, 0.99] and _HP.from_dict(d) == _HP(widths=(5.0,))
    with pytest.raises(ConfigError, match="unknown LO hyper-parameter"):
        _HP.from_dict({"nope": 1})


def test_sections_name_their_registries_and_builders():
    assert set(registry.SECTIONS) == {"lo", "optimizer", "estimator", "truncation"}
    assert set(registry.names("optimizer")) >= {"sgd", "adam", "adamw", "muadam"}  # (+ test_registry's toy ones)
    assert set(registry.names("estimator")) >= {"pes", "es"}
    assert set(registry.names("truncation")) >= {"constant", "log_uniform"}
    assert registry.names("lo") == registry.learned_names()
    keys = registry.section_keys("optimizer", "adamw")
    assert list(keys)[:2] == ["name", "learning_rate"] and "weight_decay" in keys and "b1" in keys
    assert "lo" in keys["name"].choices and "sgd" in keys["name"].choices
    assert list(registry.section_keys("optimizer", "lo")) == ["name"]
    lo_keys = registry.section_keys("lo", "velo")
    assert lo_keys["impl"].choices == ("reference", "fused") and "lstm_hidden_size" in lo_keys
    assert "pallas" in registry.section_keys("lo", "mup_small_fc_mlp")["impl"].choices
    # one default per registered name, from its own registration (not from a config)
    assert registry.component("lo", "mup_small_fc_mlp").defaults()["step_mult"] == 0.01
    assert registry.component("lo", "small_fc_mlp").defaults()["step_mult"] == 0.001
    with pytest.raises(ConfigError, match="unknown estimator.name 'pez'; expected one of"):
        registry.component("estimator", "pez")
    with pytest.raises(ConfigError, match="unknown config section"):
        registry.names("optimiser")
    with pytest.raises(registry.RegistryError, match="reserved"):
        registry.register_hand_designed(registry.Component(name="lo", build=lambda hp, task, n: None))


def test_every_registered_component_declares_helped_keys_and_builds_from_its_defaults():
    for section in registry.SECTIONS:
        for name in registry.names(section):
            spec = registry.component(section, name)
            schema = spec.schema()
            assert schema and all(key.help for key in schema.values()), (section, name)
            assert set(spec.defaults()) == set(schema), (section, name)
            hp = spec.hparams_of({})
            assert {k: getattr(hp, k) for k in schema} == spec.defaults(), (section, name)
