"""Parsing one log file's bytes: every line classified in one vectorised pass, the data rows of
each kind and header layout then parsed in bulk by pyarrow. Unreadable lines become problems."""
from __future__ import annotations

import bisect
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from caspar.data.gamelog.log import (
    ALIASES,
    ALL_COLUMNS,
    ATTACK_COLUMNS,
    HEADER_KINDS,
    INTEGER_COLUMNS,
    NUMBER_PATTERN,
    REQUIRED_COLUMNS,
    TEXT_COLUMNS,
    TEXT_TYPE,
    VERSION_COLUMN,
    VERSIONED_ROW_KINDS,
    Board,
    Problem,
)

DATA_FIRST_BYTES = np.zeros(256, dtype=bool)
DATA_FIRST_BYTES[list(b"0123456789-")] = True  # data rows start with a number; headers with a name
ROW_KIND_NAMES = [None, *VERSIONED_ROW_KINDS.values()]


def _versioned_row_kinds(buf: np.ndarray, starts: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Per line of a versioned file: 1 + the index of its data kind in VERSIONED_ROW_KINDS, or 0."""
    peek = buf[np.minimum(starts[:, None] + np.array([0, 4, 5]), len(buf) - 1)].astype(np.int32)
    codes = peek[:, 0] << 16 | peek[:, 1] << 8 | peek[:, 2]
    kinds = np.zeros(len(starts), dtype=np.int8)
    for index, key in enumerate(VERSIONED_ROW_KINDS, 1):
        kinds[codes == (key[0] << 16 | key[1] << 8 | key[2])] = index
    kinds[empty] = 0
    return kinds


class _Group:
    """Data rows of one kind under one header layout, kept as byte ranges for bulk parsing."""

    def __init__(self, kind: str, columns: tuple[str, ...]):
        self.kind, self.columns, self.tabs = kind, columns, len(columns) - 1
        self.chunks: list[bytes] = []  # runs of consecutive non-empty data lines, each ending in \n
        self.first_lines: list[int] = []
        self.line_counts: list[int] = []

    def add(self, chunk: bytes, first_line: int, line_count: int) -> None:
        self.chunks.append(chunk)
        self.first_lines.append(first_line)
        self.line_counts.append(line_count)

    def line_numbers(self) -> np.ndarray:
        counts = np.asarray(self.line_counts, dtype=np.int64)
        offsets = np.asarray(self.first_lines, dtype=np.int64) - (np.cumsum(counts) - counts)
        return np.repeat(offsets, counts) + np.arange(counts.sum())


class LogParser:
    """Classifies every line by its first bytes (vectorised); only header-like lines are visited
    in Python, and the data rows between them go to pyarrow as byte ranges. A row belongs to the
    block of the last header before it; in a versioned file, to the last header of its own kind
    (its class name says which), so rows logged without a header of their own are still placed."""

    def __init__(self, name: str):
        self.name = name
        self.problems: list[Problem] = []
        self.groups: dict[tuple, _Group] = {}
        self.boards: list[Board] = []
        self.state_header_lines: list[int] = []
        self.singles: dict[str, dict[str, str]] = {"map_settings": {}, "planetary": {}}
        self.versioned = False
        self.newer_columns = False  # a unit header with ID or HAS_ECM: written by May 2025 or later
        self.attack_columns: tuple[str, ...] = tuple(ATTACK_COLUMNS)
        # The file being fed (index_lines sets its lines; feed resets the rest for each file):
        self.data = b""
        self.starts = self.stops = self.ends = self.blank_before = self.row_kinds = np.empty(0, np.int64)
        self.empty = np.empty(0, bool)
        self.kind_changes: list[int] = []  # versioned files: lines where the row kind changes
        self.known_headers: dict[bytes, _Group] = {}
        self.rejected: dict[str, _Group] = {}  # rows under a header lacking a required column
        self.latest: dict[str, _Group] = {}  # versioned files: the last header of each kind
        self.group: _Group | None = None  # unversioned files: the block the rows belong to
        self.consumed = -1  # index of a value row already taken by a one-row block

    def feed(self, data: bytes) -> None:
        """Every line of `data` into the groups of data rows, boards and problems."""
        headerish = self.index_lines(self.as_utf8(data))
        self.known_headers = {}
        self.rejected = {k: _Group(k, ()) for k in REQUIRED_COLUMNS}
        self.latest = {}
        self.group = None
        self.consumed = -1
        previous = -1
        for i in headerish.tolist():
            if i != self.consumed:
                self.data_run(max(previous + 1, self.consumed + 1), i)
                self.header_line(i)
            previous = i
        self.data_run(max(previous + 1, self.consumed + 1), len(self.starts))

    def as_utf8(self, data: bytes) -> bytes:
        """`data`, with any byte that is not UTF-8 (a log saved as Windows-1252, say) replaced by
        U+FFFD and reported on its line: it costs at most that line's text, never the file."""
        try:
            data.decode("utf-8")
            return data
        except UnicodeDecodeError:
            pass
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                lines[number] = line.decode("utf-8", errors="replace").encode("utf-8")
                self.problems.append(Problem(self.name, number + 1, "bytes that are not UTF-8, read as U+FFFD"))
        return b"\n".join(lines)

    def index_lines(self, data: bytes) -> np.ndarray:
        """Where each line starts and stops, which lines are blank and which hold data; returns the
        lines that may be headers."""
        if not data.endswith(b"\n"):
            data += b"\n"
        self.data = data
        buf = np.frombuffer(data, dtype=np.uint8)
        self.ends = np.flatnonzero(buf == 10)  # position of each line's \n
        self.starts = np.concatenate(([0], self.ends[:-1] + 1))
        self.stops = self.ends - (buf[np.maximum(self.ends - 1, 0)] == 13)  # CRLF: the text ends before \r
        self.empty = self.starts >= self.stops
        self.versioned = data.startswith(b"VERSION\t") or b"\nVERSION\t" in data
        if self.versioned:
            self.row_kinds = _versioned_row_kinds(buf, self.starts, self.empty)
            self.kind_changes = (np.flatnonzero(np.diff(self.row_kinds)) + 1).tolist()  # lines where the kind changes
            is_data = self.row_kinds > 0
        else:
            is_data = DATA_FIRST_BYTES[buf[self.starts]] & ~self.empty
        self.blank_before = np.cumsum(self.empty)  # blank lines up to and including each line
        return np.flatnonzero(~is_data & ~self.empty)

    def text(self, i: int) -> str:
        return self.data[self.starts[i]:self.stops[i]].decode(errors="replace")

    def data_run(self, first: int, stop: int) -> None:
        """Data lines first..stop-1 to the block(s) they belong to."""
        if first >= stop:
            return
        if not self.versioned:
            self.add_rows(self.group, first, stop)
            return
        changes = self.kind_changes
        cuts = changes[bisect.bisect_right(changes, first):bisect.bisect_left(changes, stop)]
        for a, b in zip([first, *cuts], [*cuts, stop]):
            if self.row_kinds[a]:
                self.add_rows(self.latest.get(ROW_KIND_NAMES[self.row_kinds[a]]), a, b)

    def add_rows(self, target: _Group | None, first: int, stop: int) -> None:
        """Lines first..stop-1 as one byte range of `target` (line by line if blank lines interrupt them)."""
        data, starts, ends = self.data, self.starts, self.ends
        if target is None:
            for i in range(first, stop):
                if not self.empty[i]:
                    self.problems.append(Problem(self.name, i + 1, f"data row outside any block: {self.text(i)[:40]!r}"))
        elif self.blank_before[stop - 1] - (self.blank_before[first - 1] if first else 0):
            for i in range(first, stop):  # rare: blank lines inside the run
                if not self.empty[i]:
                    target.add(data[starts[i]:ends[i] + 1], i + 1, 1)
        else:
            target.add(data[starts[first]:ends[stop - 1] + 1], first + 1, stop - first)

    def header_line(self, i: int) -> None:
        """A line that is not data: a header seen before, a comment, a board row, or a new header."""
        raw = self.data[self.starts[i]:self.stops[i]]
        known = self.known_headers.get(raw)
        if known is not None:  # the header of a data block, seen before in this file
            self.start_block(known, i)
            return
        if raw.startswith(b"#"):
            return
        body = raw
        if self.versioned:  # `VERSION` before a header's names, `<Class>.31052025` before a row's values
            body = raw.split(b"\t", 1)[1] if b"\t" in raw else b""
        if body.startswith(b"ROW_"):
            if self.boards:
                self.boards[-1].rows.append(body)
        elif not body.startswith(b"COL_"):
            self.new_header(i, raw)

    def new_header(self, i: int, raw: bytes) -> None:
        row = raw.decode(errors="replace")
        header = tuple(ALIASES.get(c, c) for c in row.rstrip("\t").split("\t"))
        names = set(header)
        kind = next((k for column, k in HEADER_KINDS if column in names), None)
        if kind is None or (self.versioned and header[0] != VERSION_COLUMN):
            self.problems.append(Problem(self.name, i + 1, f"unknown header or row starting {row[:30]!r}"))
        elif kind in ("board", "map_settings", "planetary"):
            self.consumed = i + 1
            if self.consumed < len(self.starts):
                self.single_value(kind, header, self.text(self.consumed), i + 2)
        elif missing := REQUIRED_COLUMNS[kind] - names:
            self.problems.append(Problem(self.name, i + 1, f"{kind} header lacks {sorted(missing)}; its rows are skipped"))
            self.known_headers[raw] = self.rejected[kind]
            self.start_block(self.rejected[kind], i)
        else:
            self.known_headers[raw] = group = self.groups.setdefault((kind, header), _Group(kind, header))
            self.newer_columns |= kind in ("state", "move") and bool({"ID", "HAS_ECM"} & set(row.split("\t")))
            if kind == "attack":
                self.attack_columns = header
            self.start_block(group, i)

    def start_block(self, group: _Group, i: int) -> None:
        self.group = self.latest[group.kind] = group
        if group.kind == "state" and group.columns:
            self.state_header_lines.append(i + 1)

    @property
    def format(self) -> str:
        return "versioned" if self.versioned else "2025-05" if self.newer_columns else "2025-03"

    def single_value(self, kind: str, header: tuple, row: str, line: int) -> None:
        if kind == "board":
            board = _board_from_values(header, row, line, self.name, self.problems)
            if board is not None:
                self.boards.append(board)
        else:
            self.singles[kind] = {k: v for k, v in zip(header, row.split("\t")) if k != VERSION_COLUMN}

    def tables(self, kinds=tuple(ALL_COLUMNS)) -> dict[str, pa.Table]:
        parts = {kind: [] for kind in ALL_COLUMNS}
        stray = _Group("attack", self.attack_columns)  # attack rows with no attack header of their own
        for group in [g for g in self.groups.values() if g.chunks]:
            table, invalid = _parse_group(group, self.name, self.problems)
            parts[group.kind].append(table)
            repaired = _Group(group.kind, group.columns)
            for line, row in invalid:
                tabs = row.count("\t")
                if tabs == stray.tabs and group.kind != "attack":
                    stray.add((row + "\n").encode(), line, 1)
                elif tabs == group.tabs + 1 and row.endswith("\t"):
                    repaired.add((row[:-1] + "\n").encode(), line, 1)
                else:
                    self.row_problem(group, line, row)
            if repaired.chunks:
                parts[group.kind].append(self.parse_strict(repaired))
        if stray.chunks:
            parts["attack"].append(self.parse_strict(stray))
        return {kind: infinite_as_missing(concat(parts[kind], ALL_COLUMNS[kind]), self.name, self.problems)
                for kind in kinds}

    def parse_strict(self, group: _Group) -> pa.Table:
        table, invalid = _parse_group(group, self.name, self.problems)
        for line, row in invalid:
            self.row_problem(group, line, row)
        return table

    def row_problem(self, group: _Group, line: int, row: str) -> None:
        self.problems.append(Problem(
            self.name, line, f"{group.kind} row has {row.count(chr(9)) + 1} fields, header has {group.tabs + 1}"))


def infinite_as_missing(table: pa.Table, name: str, problems: list[Problem]) -> pa.Table:
    """An infinite number is reported and read as missing, like `NaN` (which MegaMek writes for
    "no value"): a feature never sees it."""
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


def _board_from_values(header, line, number, name, problems) -> Board | None:
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


def _parse_group(group: _Group, name: str, problems: list[Problem]) -> tuple[pa.Table, list]:
    """Parse a group's rows in bulk. Returns the rows read and the (line, text) of rows whose
    field count does not fit the header; rows with an unreadable number are reported and dropped."""
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
    if not tables:
        return pa.schema([("line", pa.int64())] + [
            (c, TEXT_TYPE if c in TEXT_COLUMNS else pa.float64()) for c in columns]).empty_table()
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    return table.take(pc.sort_indices(table["line"]))
