import pytest

from hybridcore.layout import compact_layout, layout_from_ratios, parse_layout, split_by_cost


@pytest.mark.parametrize("text", ["P-" * 36, "M-M-M*-" * 4, "*-" * 3, "M" * 5, "P-P-|P-P-", "M*|-|P"])
def test_parse_round_trips(text):
    layout = parse_layout(text)
    assert str(layout) == text
    assert len(layout.kinds) == len(text.replace("|", ""))


def test_stages_follow_boundaries():
    layout = parse_layout("P-P-|M-|*")
    assert layout.stages == [[0, 1, 2, 3], [4, 5], [6]]
    assert layout.counts() == {"parallel": 2, "mamba": 1, "attention": 1, "mlp": 3}


@pytest.mark.parametrize("text, char, position", [("P-X", "'X'", 2), ("p-", "'p'", 0), ("P- ", "' '", 2)])
def test_unknown_character_is_named_with_position(text, char, position):
    with pytest.raises(ValueError, match=f"unknown character {char} at position {position}"):
        parse_layout(text)


@pytest.mark.parametrize("text, message", [
    ("", "no layers"), ("|P-", "empty pipeline stage before '\\|' at position 0"),
    ("P-||M", "empty pipeline stage before '\\|' at position 3"), ("P-|", "after the last"),
])
def test_structural_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layout(text)


def test_layout_must_be_a_string():
    with pytest.raises(ValueError, match="must be a string"):
        parse_layout(["P"])


def test_ratios_give_falcon_h1_and_sequential_patterns():
    assert layout_from_ratios(72, parallel=0.5, mlp=0.5) == "P-" * 36
    assert layout_from_ratios(8, mlp=0.5) == "M-" * 4
    assert layout_from_ratios(6, attention=0.5) == "M*" * 3
    assert layout_from_ratios(5) == "M" * 5


@pytest.mark.parametrize("n, kw", [(12, dict(attention=1 / 12, mlp=0.5)), (30, dict(parallel=0.2, attention=0.1,
                                                                                    mlp=0.4)), (7, dict(mlp=0.3))])
def test_ratios_are_deterministic_exact_in_count_and_even(n, kw):
    text = layout_from_ratios(n, **kw)
    assert text == layout_from_ratios(n, **kw)
    assert len(text) == n
    fractions = {"P": kw.get("parallel", 0), "*": kw.get("attention", 0), "-": kw.get("mlp", 0)}
    for char, fraction in fractions.items():
        count = text.count(char)
        assert abs(count - fraction * n) < 1, (char, count)
        if count >= 2:  # evenly spread: gaps between consecutive layers of a kind differ by little
            positions = [i for i, c in enumerate(text) if c == char]
            gaps = [b - a for a, b in zip(positions, positions[1:])]
            assert max(gaps) - min(gaps) <= 2, (char, gaps)


@pytest.mark.parametrize("kw, message", [(dict(parallel=0.7, mlp=0.5), "sum to"), (dict(mlp=-0.1), "mlp"),
                                         (dict(attention=1.5), "attention")])
def test_ratio_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        layout_from_ratios(10, **kw)
    with pytest.raises(ValueError, match="num_layers"):
        layout_from_ratios(0)


def test_split_by_cost_balances_cost_not_count():
    costs = [10, 1] * 4 + [1] * 8  # expensive layers first
    stages = split_by_cost(costs, 2)
    assert [i for stage in stages for i in stage] == list(range(len(costs)))
    loads = [sum(costs[i] for i in stage) for stage in stages]
    assert max(loads) == 30  # the optimum (22 | 30); a by-count split would give 44 | 8
    with pytest.raises(ValueError):
        split_by_cost([1, 1], 3)


def test_compact_layout():
    assert compact_layout("P-" * 36) == '"P-" * 36'
    assert compact_layout("M-M*") == '"M-M*"'
