"""The search as phases, held to what main (d7778be) planned before the refactor: from the same
saved per-layer tables (Zen 5 runs of EfficientNet-Lite1, ResNet-56 and the CIFAR ViT), the
allocation phase and the fixed-error planner make the same plans main made, recorded in
tests/data/planner/*.allocations.json by main's inline code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmt_deploy.planner import LayerTable, SearchConfig, SearchConfigError, candidate_allocations
from rmt_deploy.planner.fixed import fixed_error_allocation

DATA = Path(__file__).parent / "data" / "planner"
MODELS = ("effnet", "resnet56", "vit")


def _load(model: str) -> tuple[dict, dict]:
    tables = json.loads((DATA / f"{model}.tables.json").read_text())
    expected = json.loads((DATA / f"{model}.allocations.json").read_text())
    return tables, expected


def _forms(choices: dict) -> dict:
    return {name: [o.form, o.rank] for name, o in choices.items()}


@pytest.mark.parametrize("model", MODELS)
def test_allocations_are_mains_on_the_saved_tables(model):
    saved, expected = _load(model)
    for deployment, table in saved["tables"].items():
        entries = LayerTable.from_dict(table).layers
        made = candidate_allocations(entries, saved["sensitivity"], {}, 0.02)
        want = expected[deployment]
        assert len(made) == len(want) >= 5, deployment
        for a, w in zip(made, want, strict=True):
            assert _forms(a.choices) == w["choices"]
            assert a.saving_ms == pytest.approx(w["saving_ms"], rel=1e-12)
            assert a.damage == pytest.approx(w["damage"], rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_fixed_error_plans_are_mains(model):
    saved, expected = _load(model)
    for deployment, table in saved["tables"].items():
        made = fixed_error_allocation(LayerTable.from_dict(table), 0.02, 0.02)
        assert _forms(made.choices) == expected[f"fixed|{deployment}"]
        assert any(o.form == "lowrank" for o in made.choices.values())


def test_a_prior_divides_the_sensitivities():
    """SEB's layer weights divide the measured sensitivities: a layer weighted 1e-6 counts a
    millionfold, so it stays dense in every allocation where main compressed it."""
    saved, _ = _load("vit")
    table = saved["tables"]["openvino"]
    layer = "blocks.0.mlp.fc1"
    plain = candidate_allocations(LayerTable.from_dict(table).layers, saved["sensitivity"], {}, 0)
    entries = LayerTable.from_dict(table).layers
    weighted = candidate_allocations(entries, saved["sensitivity"], {layer: 1e-6}, 0)
    entry = next(e for e in entries if e.name == layer)
    assert entry.sensitivity == pytest.approx(saved["sensitivity"][layer] * 1e6)
    assert any(a.choices[layer].form == "lowrank" for a in plain)
    assert all(a.choices[layer].form == "dense" for a in weighted)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rank_multiple": 0}, "rank_multiple must be ≥ 1"),
        ({"rounds": 2.5}, "rounds must be a whole number"),
        ({"min_speedup": 0.99}, "min_speedup must be ≥ 1"),
        ({"plan_within": 0.5}, "plan_within must be ≥ 1"),
        ({"layer_error": 0.0}, "layer_error must be > 0"),
        ({"latency_target": -2.0}, "latency_target must be > 0"),
        ({"accuracy_budget": float("nan")}, "accuracy_budget must be ≥ 0"),
        ({"refine": 3}, "refine must be true or false"),
        ({"sensitivity_prior": "hrank"}, "is none or seb"),
    ],
)
def test_search_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(SearchConfigError, match=message):
        SearchConfig(**settings)


def test_search_config_defaults_and_optional_settings():
    c = SearchConfig(backend="openvino")
    assert c.targets == ["openvino"] and c.fixed and c.error_per_layer == 0.02
    assert SearchConfig(layer_error=0.05, accuracy_budget=1.0).error_per_layer == 0.05
    assert not SearchConfig(accuracy_budget=0.0).fixed and SearchConfig().targets == "auto"


def test_the_latency_strategy_refuses_bad_settings_when_checked():
    """The strategy's settings are the search config's fields: a bad one is refused when the
    settings are checked (config load), naming it, not clamped or found mid-plan."""
    from rmt_deploy.strategies import STRATEGIES, StrategyError, check_settings

    assert STRATEGIES["latency"].defaults["min_speedup"] == SearchConfig().min_speedup
    assert check_settings("latency", {"rank_multiple": "16", "layer_error": None}) == {
        "rank_multiple": 16,
        "layer_error": None,
    }
    for bad, named in (({"finalists": 0}, "finalists"), ({"prior": "x"}, "prior")):
        with pytest.raises(StrategyError, match=f"strategy 'latency': .*{named}"):
            check_settings("latency", bad)
    with pytest.raises(StrategyError, match="has no setting sensitivity_prior"):
        check_settings("latency", {"sensitivity_prior": "seb"})
