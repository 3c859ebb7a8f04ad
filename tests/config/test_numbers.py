"""Numbers that pass a type check but cannot train are refused at recipe load, naming the setting."""

from __future__ import annotations

import re

import pytest

from haste_core.errors import RecipeError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=nan", "optimizer.lr: expected a finite number, got 'nan'"),
        ("optimizer.lr=.inf", "optimizer.lr: expected a finite number, got inf"),
        ("optimizer.lr=inf", "optimizer.lr: expected a finite number, got 'inf'"),
        ("optimizer.eps=0", "optimizer.eps: must be positive (AdamW divides by sqrt(v) + eps), got 0.0"),
        ("optimizer.eps=-1e-8", "optimizer.eps: must be positive"),
        ("alignment.0.weight=nan", "alignment[0].weight: expected a finite number, got 'nan'"),
        ("alignment.1.weight=.nan", "alignment[1].weight: expected a finite number, got nan"),
        ("run.collective_timeout_s=0", "run.collective_timeout_s: must be positive, got 0.0"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused(tiny, override, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        tiny(override)


def test_finite_numbers_still_load(tiny):
    recipe = tiny("optimizer.lr=3e-4", "optimizer.eps=1e-6", "alignment.0.weight=0.25")
    assert (recipe.optimizer.lr, recipe.optimizer.eps, recipe.alignments[0].weight) == (3e-4, 1e-6, 0.25)
