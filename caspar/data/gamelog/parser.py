"""Parsing one log file's bytes: every line classified in one vectorised pass, the data rows of
each kind and header layout then parsed in bulk by pyarrow. Unreadable lines become problems."""
from __future__ import annotations

import bisect

import numpy as np
import pyarrow as pa

from caspar.data.gamelog.log import (
    ALIASES,
    ALL_COLUMNS,
    ATTACK_COLUMNS,
    HEADER_KINDS,
    REQUIRED_COLUMNS,
    VERSION_COLUMN,
    VERSIONED_ROW_KINDS,
    Board,
    Problem,
)
from caspar.data.gamelog.tables import (
    RowGroup,
    board_from_values,
    concat,
    infinite_as_missing,
    parse_group,
    unknown_roles_reported,
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


class LogParser:
    """Classifies every line by its first bytes (vectorised); only header-like lines are visited
    in Python, and the data rows between them go to pyarrow as byte ranges. A row belongs to the
    block of the last header before it; in a versioned file, to the last header of its own kind
    (its class name says which), so rows logged without a header of their own are still placed."""

    def __init__(self, name: str):
        self.name = name
        self.problems: list[Problem] = []
        self.groups: dict[tuple, RowGroup] = {}
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
        self.known_headers: dict[bytes, RowGroup] = {}
        self.rejected: dict[str, RowGroup] = {}  # rows under a header lacking a required column
        self.latest: dict[str, RowGroup] = {}  # versioned files: the last header of each kind
        self.group: RowGroup | None = None  # unversioned files: the block the rows belong to
        self.consumed = -1  # index of a value row already taken by a one-row block

    def feed(self, data: bytes) -> None:
        """Every line of a file into the groups of data rows, boards and problems.

        Args:
            data: the file's bytes.
        """
        headerish = self.index_lines(self.as_utf8(data))
        self.known_headers = {}
        self.rejected = {k: RowGroup(k, ()) for k in REQUIRED_COLUMNS}
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
        U+FFFD and reported on its line: it costs at most that line's text, never the file.

        Args:
            data: the file's bytes.

        Returns:
            Bytes that decode as UTF-8.
        """
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
        """Where each line starts and stops, which lines are blank and which hold data.

        Args:
            data: the file's bytes, UTF-8.

        Returns:
            The 0-based indices of the lines that may be headers.
        """
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
        """A line as text.

        Args:
            i: the line (0-based).

        Returns:
            Its text, undecodable bytes replaced.
        """
        return self.data[self.starts[i]:self.stops[i]].decode(errors="replace")

    def data_run(self, first: int, stop: int) -> None:
        """Data lines to the block(s) they belong to.

        Args:
            first: the first line (0-based).
            stop: the line after the last.
        """
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

    def add_rows(self, target: RowGroup | None, first: int, stop: int) -> None:
        """Lines as one byte range of a group (line by line if blank lines interrupt them).

        Args:
            target: the group, or None (rows outside any block: reported).
            first: the first line (0-based).
            stop: the line after the last.
        """
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
        """A line that is not data: a header seen before, a comment, a board row, or a new header.

        Args:
            i: the line (0-based).
        """
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
        """A header not seen before in this file: a block of data rows starts, or a board's (or the
        map settings' or planetary conditions') single data line follows; an unknown or incomplete
        header is reported and its rows skipped.

        Args:
            i: its line (0-based).
            raw: its bytes.
        """
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
            self.known_headers[raw] = group = self.groups.setdefault((kind, header), RowGroup(kind, header))
            self.newer_columns |= kind in ("state", "move") and bool({"ID", "HAS_ECM"} & set(row.split("\t")))
            if kind == "attack":
                self.attack_columns = header
            self.start_block(group, i)

    def start_block(self, group: RowGroup, i: int) -> None:
        """The rows after line i belong to a group.

        Args:
            group: the group.
            i: the header's line (0-based).
        """
        self.group = self.latest[group.kind] = group
        if group.kind == "state" and group.columns:
            self.state_header_lines.append(i + 1)

    @property
    def format(self) -> str:
        """The file's layout: "versioned", "2025-05" or "2025-03"."""
        return "versioned" if self.versioned else "2025-05" if self.newer_columns else "2025-03"

    def single_value(self, kind: str, header: tuple, row: str, line: int) -> None:
        """The one data line of a board, the map settings or the planetary conditions.

        Args:
            kind: "board", "map_settings" or "planetary".
            header: its header's columns.
            row: the data line.
            line: its 1-based line.
        """
        if kind == "board":
            board = board_from_values(header, row, line, self.name, self.problems)
            if board is not None:
                self.boards.append(board)
        else:
            self.singles[kind] = {k: v for k, v in zip(header, row.split("\t")) if k != VERSION_COLUMN}

    def tables(self, kinds=tuple(ALL_COLUMNS)) -> dict[str, pa.Table]:
        """Every group's rows parsed: a row with one tab too many at its end is repaired, a stray
        attack row joins the attacks, any other misfit is reported.

        Args:
            kinds: the kinds wanted.

        Returns:
            {kind: its rows in line order, infinite numbers as missing}.
        """
        parts = {kind: [] for kind in ALL_COLUMNS}
        stray = RowGroup("attack", self.attack_columns)  # attack rows with no attack header of their own
        for group in [g for g in self.groups.values() if g.chunks]:
            table, invalid = parse_group(group, self.name, self.problems)
            parts[group.kind].append(table)
            repaired = RowGroup(group.kind, group.columns)
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
        return {kind: unknown_roles_reported(infinite_as_missing(concat(parts[kind], ALL_COLUMNS[kind]), self.name,
                                                                 self.problems), self.name, self.problems)
                for kind in kinds}

    def parse_strict(self, group: RowGroup) -> pa.Table:
        """Parses a group's rows, every misfit reported.

        Args:
            group: the rows.

        Returns:
            The rows read.
        """
        table, invalid = parse_group(group, self.name, self.problems)
        for line, row in invalid:
            self.row_problem(group, line, row)
        return table

    def row_problem(self, group: RowGroup, line: int, row: str) -> None:
        """Reports a row whose field count does not fit its header.

        Args:
            group: its group.
            line: its 1-based line.
            row: its text.
        """
        self.problems.append(Problem(
            self.name, line, f"{group.kind} row has {row.count(chr(9)) + 1} fields, header has {group.tabs + 1}"))
