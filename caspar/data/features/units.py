"""Full armour and internal points of units, for logs whose state rows lack them (FEATURES.md §7).

The published table `unit_points_v1.csv` (part of feature set v1) is shipped beside this module.
A MegaMek unit table (`--mekfile`, a TSV with Chassis, Model, TotalArmor, TotalInternal, ...)
may replace its exact and per-chassis lookups; the per-TYPE medians always come from the table.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TABLE = Path(__file__).with_name("unit_points_v1.csv")


@dataclass
class UnitPoints:
    """The full armour and internal points of units, by model line, chassis or type."""
    exact: dict[tuple[str, str], tuple[float, float]]
    by_chassis: dict[str, tuple[float, float]]  # chassis whose every line has the same points
    by_type: dict[str, tuple[float, float]]  # per-TYPE medians

    def lookup(self, chassis: str, model: str, unit_type: str) -> tuple[float, float]:
        """A unit's full points.

        Args:
            chassis: its chassis.
            model: its model.
            unit_type: its TYPE.

        Returns:
            (full armour, full internal) by exact line, else chassis, else TYPE median, else (0, 0).
        """
        points = self.exact.get((chassis, model)) or self.by_chassis.get(chassis)
        return points or self.by_type.get(unit_type, (0.0, 0.0))


def load_unit_points(table: str | Path = DEFAULT_TABLE, mekfile: str | Path | None = None) -> UnitPoints:
    """The unit table.

    Args:
        table: unit_points_v1.csv (its per-TYPE medians are always used).
        mekfile: MegaMek's unit table (TSV), whose lines replace the CSV's if given.

    Returns:
        The UnitPoints.

    Raises:
        ValueError: a malformed table, naming its file and line.
    """
    rows = _read_table(table)
    by_type: dict[str, tuple[float, float]] = {}
    for unit_type in {t for _, _, t, _, _ in rows}:
        armor = [a for _, _, t, a, _ in rows if t == unit_type]
        internal = [i for _, _, t, _, i in rows if t == unit_type]
        by_type[unit_type] = (float(statistics.median(armor)), float(statistics.median(internal)))
    lines = [(c, m, a, i) for c, m, _, a, i in rows] if mekfile is None else _read_mekfile(mekfile)
    return UnitPoints(exact={(c, m): (a, i) for c, m, a, i in lines},
                      by_chassis=_unambiguous_chassis(lines), by_type=by_type)


def _read_table(path: str | Path) -> list[tuple[str, str, str, float, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = []
        for number, row in enumerate(reader, start=2):
            try:
                rows.append((row["CHASSIS"], row["MODEL"], row["TYPE"], float(row["ARMOR"]), float(row["INTERNAL"])))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: unreadable unit points line ({error})") from None
    return rows


def _read_mekfile(path: str | Path) -> list[tuple[str, str, float, float]]:
    """MegaMek's unit table: TSV with a header naming Chassis, Model, TotalArmor, TotalInternal."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"Chassis", "Model", "TotalArmor", "TotalInternal"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}:1: mekfile header lacks {sorted(missing)}")
        lines = []
        for number, row in enumerate(reader, start=2):
            try:
                lines.append((row["Chassis"], row["Model"], float(row["TotalArmor"]), float(row["TotalInternal"])))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: unreadable mekfile line ({error})") from None
    return lines


def _unambiguous_chassis(lines) -> dict[str, tuple[float, float]]:
    seen: dict[str, set[tuple[float, float]]] = {}
    for chassis, _, armor, internal in lines:
        seen.setdefault(chassis, set()).add((armor, internal))
    return {chassis: next(iter(points)) for chassis, points in seen.items() if len(points) == 1}
