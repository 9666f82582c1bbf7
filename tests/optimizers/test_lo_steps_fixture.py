"""Every learned optimizer's update, on every implementation, computes what it computed at main 1c36316, bit for
bit: the params after three ``opt_fn`` updates and ``as_optax``'s first updates, on a small params tree with μP
update scales != 1 (tests/fixtures/lo_steps, written by its make_fixture.py with that code). Guards refactorings of
the LOs' steps (the μP scaling, the shared features) against any change of the numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lo_steps"
_spec = importlib.util.spec_from_file_location("lo_steps_fixture", FIXTURE / "make_fixture.py")
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)
CASES = dict(maker.cases())


@pytest.fixture(scope="module")
def expected():
    return np.load(FIXTURE / "lo_steps.npz")


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_lo_step_is_bit_identical_to_the_recorded_one(name, expected):
    got = maker.run(CASES[name])
    want = {k[len(name) + 1:]: expected[k] for k in expected.files if k.startswith(name + "/")}
    assert sorted(got) == sorted(want) and len(want) == 4 * 5
    for key in sorted(want):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {key}")
