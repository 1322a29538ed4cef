"""The layer grammar: a model's depth written as a string, one character per residual sub-layer.

    P  parallel hybrid (attention and Mamba-2 read one norm, outputs summed)
    M  Mamba-2 only
    *  attention only
    -  MLP only (SwiGLU, or squared ReLU without a gate: ModelConfig.mlp_activation)
    |  not a layer: a pipeline-stage boundary

Falcon-H1 is "P-" * num_blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYER_KINDS = {"P": "parallel", "M": "mamba", "*": "attention", "-": "mlp"}
STAGE_BOUNDARY = "|"


@dataclass(frozen=True)
class Layout:
    kinds: list[str]  # one grammar character per layer, boundaries removed
    stages: list[list[int]]  # layer indices of each explicit pipeline stage (one stage if no '|')

    def counts(self) -> dict[str, int]:
        return {name: self.kinds.count(char) for char, name in LAYER_KINDS.items()}

    def __str__(self) -> str:
        return STAGE_BOUNDARY.join("".join(self.kinds[i] for i in stage) for stage in self.stages)


def parse_layout(text: str) -> Layout:
    """Parse a grammar string; errors name the bad character and its 0-based position."""
    if not isinstance(text, str):
        raise ValueError(f"layout must be a string, got {type(text).__name__}")
    kinds: list[str] = []
    stages: list[list[int]] = [[]]
    for position, char in enumerate(text):
        if char == STAGE_BOUNDARY:
            if not stages[-1]:
                raise ValueError(f"layout {text!r}: empty pipeline stage before '|' at position {position}")
            stages.append([])
        elif char in LAYER_KINDS:
            stages[-1].append(len(kinds))
            kinds.append(char)
        else:
            allowed = ", ".join(repr(c) for c in [*LAYER_KINDS, STAGE_BOUNDARY])
            raise ValueError(f"layout {text!r}: unknown character {char!r} at position {position} "
                             f"(allowed: {allowed})")
    if not kinds:
        raise ValueError(f"layout {text!r} has no layers")
    if not stages[-1]:
        raise ValueError(f"layout {text!r}: empty pipeline stage after the last '|'")
    return Layout(kinds=kinds, stages=stages)


def layout_from_ratios(num_layers: int, parallel: float = 0.0, attention: float = 0.0,
                       mlp: float = 0.0) -> str:
    """Build a layout of `num_layers` characters from fractions of P, *, - (the rest is M).

    Counts are rounded by largest remainder so they sum to num_layers; each kind is then spread evenly
    over the depth: the k-th of n mixer layers of a kind sits near depth (k + 1/2) / n, and the k-th
    of n MLPs at (k + 1) / n, so an MLP follows the mixer before it. Deterministic.
    """
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    ratios = {"P": parallel, "*": attention, "-": mlp}
    for char, value in ratios.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"ratio for {LAYER_KINDS[char]} must be in [0, 1], got {value}")
    total = sum(ratios.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"ratios sum to {total:.4g} > 1 (parallel={parallel}, attention={attention}, mlp={mlp})")
    ratios["M"] = max(0.0, 1.0 - total)

    exact = {char: value * num_layers for char, value in ratios.items()}
    counts = {char: int(value) for char, value in exact.items()}
    order = sorted(exact, key=lambda c: (-(exact[c] - counts[c]), "PM*-".index(c)))
    for char in order[: num_layers - sum(counts.values())]:
        counts[char] += 1

    slots = []  # (depth key, tie-break, char)
    for rank, char in enumerate("PM*-"):
        n = counts[char]
        offset = 1.0 if char == "-" else 0.5
        slots += [((k + offset) / n, rank, char) for k in range(n)]
    return "".join(char for _, _, char in sorted(slots))


def split_by_cost(costs: list[float], num_stages: int) -> list[list[int]]:
    """Cut a sequence of layer costs into `num_stages` contiguous stages of near-equal total cost.

    Minimises the most expensive stage (binary search on the bound, greedy packing): a P layer weighs
    more than a '-' layer, so balancing by count would leave stages idle.
    """
    if num_stages <= 0 or num_stages > len(costs):
        raise ValueError(f"cannot split {len(costs)} layers into {num_stages} pipeline stages")

    def pack(limit: float) -> list[list[int]] | None:
        stages: list[list[int]] = [[]]
        load = 0.0
        for index, cost in enumerate(costs):
            if stages[-1] and load + cost > limit:
                stages.append([])
                load = 0.0
            stages[-1].append(index)
            load += cost
            if load > limit:
                return None
        return stages if len(stages) <= num_stages else None

    low, high = max(costs), sum(costs)
    for _ in range(60):
        middle = (low + high) / 2
        if pack(middle) is None:
            low = middle
        else:
            high = middle
    stages = pack(high)
    assert stages is not None
    # Too few stages (cheap tail): split the largest stages until the count is right.
    while len(stages) < num_stages:
        widest = max(range(len(stages)), key=lambda i: len(stages[i]))
        stage = stages.pop(widest)
        half = len(stage) // 2
        stages[widest:widest] = [stage[:half], stage[half:]]
    return stages


def compact_layout(text: str) -> str:
    """Shortest `"unit" * n` form of a layout string, for display: "P-P-P-P-" -> '"P-" * 4'."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return f'"{text[:size]}" * {len(text) // size}'
    return f'"{text}"'
