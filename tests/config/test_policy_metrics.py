"""A metric a termination policy reads by name is checked when the recipe is validated (``haste check``)."""

from __future__ import annotations

import pytest

from haste_core.errors import RecipeError
from tests.conftest import TINY_RECIPE, run_module


def test_plateau_watching_a_misspelt_term_fails_at_load_listing_the_valid_names(tiny):
    with pytest.raises(RecipeError) as caught:
        tiny("termination={name: plateau, metric: align/typo}")
    assert caught.value.path == "termination.metric"
    assert "metric 'align/typo' is not a value this policy is given" in str(caught.value)
    assert "the valid metric names are loss/denoise, loss/total, align/repa, align/attention" in str(caught.value)


def test_a_policy_may_read_only_the_terms_it_governs(tiny):
    with pytest.raises(RecipeError, match=r"alignment\[1\]\.termination\.metric: metric 'align/repa' .*"
                       r"the valid metric names are loss/denoise, loss/total, align/attention"):  # fmt: skip
        tiny("alignment.1.termination={name: plateau, metric: align/repa}")
    recipe = tiny("alignment.1.termination={name: plateau, metric: align/attention/pair_1_2}")
    assert recipe.alignments[1].termination.config.metric == "align/attention/pair_1_2"


def test_watching_policies_are_checked_against_every_alignment(tiny):
    assert tiny("termination.watch=[{name: plateau, metric: align/repa}]").watch[0].config.metric == "align/repa"
    with pytest.raises(RecipeError, match=r"termination\.watch\[0\]\.metric: metric 'align/rep' .*did you mean"):
        tiny("termination.watch=[{name: plateau, metric: align/rep}]")


def test_check_command_refuses_the_misspelt_metric(tmp_path):
    result = run_module(
        "haste_core.cli", "check", str(TINY_RECIPE), f"run.output_dir={tmp_path}",
        "termination={name: plateau, metric: align/typo}",
    )  # fmt: skip
    assert result.returncode == 2
    assert "termination.metric: metric 'align/typo' is not a value this policy is given" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readme_policy_names_its_term_and_a_typo_fails_at_load(tiny, tmp_path):
    from tests.docs.test_readme import readme_plugin_source

    module = tmp_path / "haste_lossstop.py"
    module.write_text(readme_plugin_source())
    with pytest.raises(RecipeError, match=r"^termination\.term: metric 'align/rep' .*did you mean 'align/repa'"):
        tiny(f"plugins=[{module}]", "termination={name: below_threshold, term: align/rep}")


def test_a_missing_policy_lists_the_registered_ones(tiny, plugins):
    with pytest.raises(RecipeError) as caught:
        tiny("termination=null")
    assert f"({{name: ...}} with one of: {', '.join(plugins.registry('terminations').names())})" in str(caught.value)
