"""A group of a log's data rows (one kind, one header layout) as an Arrow table: pyarrow's CSV
reader in bulk, with decimal commas, NaN and infinities handled, and the rows it cannot read found
one by one and reported as problems; boards from their header values."""
from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from caspar.data.gamelog.log import (
    ALL_COLUMNS,
    INTEGER_COLUMNS,
    NUMBER_PATTERN,
    ROLE_COLUMNS,
    TEXT_COLUMNS,
    TEXT_TYPE,
    UNIT_ROLES,
    Board,
    Problem,
)


class RowGroup:
    """Data rows of one kind under one header layout, kept as byte ranges for bulk parsing."""

    def __init__(self, kind: str, columns: tuple[str, ...]):
        self.kind, self.columns, self.tabs = kind, columns, len(columns) - 1
        self.chunks: list[bytes] = []  # runs of consecutive non-empty data lines, each ending in \n
        self.first_lines: list[int] = []
        self.line_counts: list[int] = []

    def add(self, chunk: bytes, first_line: int, line_count: int) -> None:
        """Adds a run of consecutive data lines.

        Args:
            chunk: the lines' bytes, each ending in a line feed.
            first_line: the first one's 1-based line.
            line_count: how many.
        """
        self.chunks.append(chunk)
        self.first_lines.append(first_line)
        self.line_counts.append(line_count)

    def line_numbers(self) -> np.ndarray:
        """Returns [rows] the 1-based line of every data row, in order."""
        counts = np.asarray(self.line_counts, dtype=np.int64)
        offsets = np.asarray(self.first_lines, dtype=np.int64) - (np.cumsum(counts) - counts)
        return np.repeat(offsets, counts) + np.arange(counts.sum())


def infinite_as_missing(table: pa.Table, name: str, problems: list[Problem]) -> pa.Table:
    """An infinite number is reported and read as missing, like `NaN` (which MegaMek writes for
    "no value"): a feature never sees it.

    Args:
        table: rows read.
        name: the file's name, in problems.
        problems: filled with a Problem per infinite value.

    Returns:
        The table with infinite numbers null.
    """
    if not table.num_rows:
        return table
    for index, column in enumerate(table.column_names):
        values = table[column]
        if not pa.types.is_floating(values.type):
            continue
        infinite = pc.fill_null(pc.is_inf(values), False)
        if not pc.any(infinite).as_py():
            continue
        for line in pc.filter(table["line"], infinite).to_pylist():
            problems.append(Problem(name, int(line), f"{column} is not a finite number; read as missing"))
        table = table.set_column(index, column, pc.if_else(infinite, pa.scalar(None, values.type), values))
    return table


def unknown_roles_reported(table: pa.Table, name: str, problems: list[Problem]) -> pa.Table:
    """A role MegaMek does not write ('brawler', 'Sniper': it writes its UnitRole names, upper
    case) is reported; it reads as an unknown role, as the Java features read it (no role column set).

    Args:
        table: rows read.
        name: the file's name, in problems.
        problems: filled with a Problem per unknown role.

    Returns:
        The table, unchanged.
    """
    for column in [c for c in ROLE_COLUMNS if c in table.column_names and table.num_rows]:
        values = table[column]
        unknown = pc.fill_null(pc.invert(pc.or_(pc.is_in(values, value_set=pa.array(UNIT_ROLES)), pc.equal(values, ""))),
                               False)
        if pc.any(unknown).as_py():
            for line, value in zip(pc.filter(table["line"], unknown).to_pylist(), pc.filter(values, unknown).to_pylist()):
                problems.append(Problem(name, int(line), f"{column} {value!r} is not a role MegaMek writes (its UnitRole "
                                                         "names, upper case); read as an unknown role"))
    return table


def board_from_values(header, line, number, name, problems) -> Board | None:
    """A board from its header's data line.

    Args:
        header: the header's column names.
        line: the data line.
        number: its 1-based line.
        name: the file's name, in problems.
        problems: filled with a Problem if its size is unreadable.

    Returns:
        The Board, or None.
    """
    values = dict(zip(header, line.split("\t")))
    try:
        width, height = int(values["WIDTH"].strip()), int(values["HEIGHT"].strip())
    except (KeyError, ValueError):
        problems.append(Problem(name, number, f"board size unreadable: {line[:60]!r}"))
        return None
    if width <= 0 or height <= 0:
        problems.append(Problem(name, number, f"board size {width}x{height} is not positive"))
        return None
    return Board(line=number - 1, name=values.get("BOARD_NAME", ""), width=width, height=height)


def parse_group(group: RowGroup, name: str, problems: list[Problem]) -> tuple[pa.Table, list]:
    """Parses a group's rows in bulk; rows with an unreadable number are reported and dropped.

    Args:
        group: the rows.
        name: the file's name, in problems.
        problems: filled with a Problem per row dropped.

    Returns:
        (the rows read, [(line, text)] of rows whose field count does not fit the header).
    """
    columns = list(group.columns)
    known = [c for c in columns if c in ALL_COLUMNS[group.kind]]
    all_lines = group.line_numbers()
    data = b"".join(group.chunks)
    invalid: list[tuple[int, str]] = []

    def read(types: dict, decimal_point: str) -> pa.Table:
        invalid.clear()

        def on_invalid(row):
            invalid.append((int(all_lines[row.number - 1]), row.text))
            return "skip"

        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns, use_threads=False, block_size=block_size),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=known, decimal_point=decimal_point,
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )

    block_size = min(max(len(data) + 1, 1 << 20), 1 << 26)  # one block: cheaper than many small ones
    floats = {c: TEXT_TYPE if c in TEXT_COLUMNS else pa.float64() for c in known}
    # Integer columns parse much faster as integers; a log that writes them as `2.00` falls back.
    integers = {c: pa.int64() if c in INTEGER_COLUMNS else t for c, t in floats.items()}
    first_row = data[:data.find(b"\n")]
    decimal_point = "," if re.search(rb"\d,\d", first_row) else "."  # 17 real logs write `0,88`
    other_point = "." if decimal_point == "," else ","
    table = None
    for types, point in ((integers, decimal_point), (floats, decimal_point), (floats, other_point)):
        try:
            table = read(types, point)
            break
        except pa.ArrowInvalid:
            continue
    lenient = table is None  # some value is not a number in either notation: find it row by row
    if lenient:
        table = read({c: pa.string() for c in known}, ".")
    lines = all_lines[~np.isin(all_lines, [line for line, _ in invalid])] if invalid else all_lines
    if lenient:
        table, lines = _read_numbers_leniently(table, lines, name, problems)
    table = table.add_column(0, "line", pa.array(lines))
    for column in ALL_COLUMNS[group.kind]:
        if column not in known:
            table = table.append_column(column, pa.nulls(table.num_rows, TEXT_TYPE if column in TEXT_COLUMNS else pa.float64()))
    return table.select(["line", *ALL_COLUMNS[group.kind]]), invalid


def _read_numbers_leniently(table: pa.Table, lines: np.ndarray, name: str, problems: list[Problem]):
    keep = np.ones(table.num_rows, dtype=bool)
    for column in table.column_names:
        if column in TEXT_COLUMNS:
            continue
        readable = pc.match_substring_regex(table[column], NUMBER_PATTERN).to_numpy(zero_copy_only=False)
        raw = table[column].to_pylist()
        for i in np.flatnonzero(~readable & keep):
            problems.append(Problem(name, int(lines[i]), f"{column} is not a number: {raw[i]!r}"))
        keep &= readable
    table = table.filter(pa.array(keep))
    for index, column in enumerate(table.column_names):
        values = pc.utf8_trim_whitespace(table[column])
        if column in TEXT_COLUMNS:
            table = table.set_column(index, column, values.cast(TEXT_TYPE))
        else:
            values = pc.replace_substring(values, ",", ".")
            values = pc.if_else(pc.equal(values, "NaN"), "nan", values)
            table = table.set_column(index, column, values.cast(pa.float64()))
    return table, lines[keep]


def concat(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    """Tables of one kind as one, in line order.

    Args:
        tables: the groups' tables (their columns may differ).
        columns: the columns of an empty result.

    Returns:
        One table.
    """
    if not tables:
        return pa.schema([("line", pa.int64())] + [
            (c, TEXT_TYPE if c in TEXT_COLUMNS else pa.float64()) for c in columns]).empty_table()
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    return table.take(pc.sort_indices(table["line"]))
