"""The feature registry: one small function per feature (or block), registered in schema order.

Adding a feature means writing one decorated function; the schema (ordered names, widths and a
version hash) follows from the registry.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FEATURE_SET = "v1"


@dataclass(frozen=True)
class Feature:
    """One registered feature (or block of `width` values): how it is computed and described."""
    name: str
    width: int
    compute: Callable  # Situation -> array [M] (width 1) or [M, width]
    names: tuple[str, ...]
    bounds: tuple[float, float]  # every value lies in [low, high] (FEATURES.md's range)
    description: str  # one line, for docs/features.md


REGISTRY: list[Feature] = []


def feature(name: str, width: int = 1, names: list[str] | None = None, bounds: tuple[float, float] = (0.0, 1.0),
            description: str = ""):
    """Registers `compute(situation)` as the next feature (or block of `width` values). A registered
    function's documentation is its `description` (docs/features.md lists it): each takes the
    Situation of a game's M moves and returns [M] values (width 1) or [M, width].

    Args:
        name: the feature's name (its column's, or its block's prefix).
        width: values per move.
        names: the block's column names (name_0 … name_{width-1} if None).
        bounds: the range every value lies in (FEATURES.md's).
        description: one line, for docs/features.md.

    Returns:
        The decorator, which returns the function unchanged.
    """
    def register(compute):
        column_names = tuple(names or ([name] if width == 1 else [f"{name}_{i}" for i in range(width)]))
        assert len(column_names) == width, name
        assert all(f.name != name for f in REGISTRY), f"feature {name} registered twice"
        REGISTRY.append(Feature(name, width, compute, column_names, bounds, description))
        return compute
    return register


def feature_names() -> list[str]:
    """Returns every feature column's name, in schema order."""
    return [n for f in REGISTRY for n in f.names]


def feature_bounds() -> np.ndarray:
    """[width, 2]: low and high bound of every feature column."""
    return np.array([f.bounds for f in REGISTRY for _ in f.names], dtype=np.float64)


def schema() -> dict:
    """Ordered names and widths, and a hash that changes whenever either does."""
    features = [{"name": f.name, "width": f.width, "columns": list(f.names), "bounds": list(f.bounds)}
                for f in REGISTRY]
    body = {"feature_set": FEATURE_SET, "features": features}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {**body, "width": sum(f.width for f in REGISTRY), "version": f"{FEATURE_SET}-{digest}"}


def compute_all(situation) -> np.ndarray:
    """Every registered feature of a game's moves.

    Args:
        situation: the Situation of M moves.

    Returns:
        [M, width] float64, the features in schema order.
    """
    columns = []
    for f in REGISTRY:
        values = np.asarray(f.compute(situation), dtype=np.float64)
        columns.append(values.reshape(situation.n, f.width))
    return np.concatenate(columns, axis=1) if columns else np.empty((situation.n, 0))


def markdown() -> str:
    """docs/features.md: every feature in schema order (`python -m caspar.data.features` writes it)."""
    version = schema()["version"]
    lines = [
        "# Feature set", "",
        f"Generated from the feature registry (`caspar/data/features/`) by `make docs`; feature set `{version}`, "
        f"{sum(f.width for f in REGISTRY)} values per move. Inputs reach the network min-max normalised "
        "(`min_max_feature_normalization.csv`).", "",
        "| index | name | width | bounds | description |", "|---|---|---|---|---|",
    ]
    index = 0
    for f in REGISTRY:
        where = str(index) if f.width == 1 else f"{index}–{index + f.width - 1}"
        lines.append(f"| {where} | `{f.name}` | {f.width} | [{f.bounds[0]:g}, {f.bounds[1]:g}] | {f.description} |")
        index += f.width
    return "\n".join(lines) + "\n"

