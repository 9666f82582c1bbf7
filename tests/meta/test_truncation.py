"""Truncation schedules (src/mulo/meta/truncation.py)."""

import jax
import numpy as np
import pytest

from mulo.errors import ConfigError
from mulo.meta.truncation import TruncationSchedule


def test_log_uniform_lengths_in_range_and_log_uniform():
    lo, hi, n = 10, 1000, 200_000
    sched = TruncationSchedule("log_uniform", lo, hi)
    lengths = np.asarray(sched.sample_length(jax.random.PRNGKey(0), (n,)))
    assert lengths.dtype == np.int32
    assert lengths.min() == lo and lengths.max() == hi  # both ends are reachable
    # discrete log-uniform: P(L <= q) = ln((q + 1) / lo) / ln((hi + 1) / lo); check many quantiles (KS-type)
    qs = np.unique(np.geomspace(lo, hi, 60).astype(int))
    empirical = np.array([(lengths <= q).mean() for q in qs])
    expected = np.log((qs + 1) / lo) / np.log((hi + 1) / lo)
    assert np.max(np.abs(empirical - expected)) < 1.63 / np.sqrt(n) * 2  # well inside a 1% KS band
    # and it is not uniform in L: the median is the geometric mean, far below the arithmetic one
    assert abs(np.median(lengths) - np.sqrt(lo * (hi + 1))) < 5


def test_constant_schedule_and_offsets():
    sched = TruncationSchedule("constant", 100, 40, initial_offset=7)
    np.testing.assert_array_equal(sched.sample_length(jax.random.PRNGKey(0), (5,)), 40)
    offs = np.asarray(sched.sample_offset(jax.random.PRNGKey(1), (10_000,)))
    assert offs.min() == 0 and offs.max() == 6 and len(np.unique(offs)) == 7
    zero = TruncationSchedule("constant", 1, 40, initial_offset=0)
    np.testing.assert_array_equal(zero.sample_offset(jax.random.PRNGKey(1), (4,)), 0)


def test_bad_schedule_is_config_error():
    with pytest.raises(ConfigError, match="truncation.min_length"):
        TruncationSchedule("log_uniform", 200, 100)
    with pytest.raises(ConfigError, match="truncation.name"):
        TruncationSchedule("cosine", 1, 100)
