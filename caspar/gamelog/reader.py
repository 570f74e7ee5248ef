"""Read one MegaMek game log (the game dataset logger's TSV) into typed tables.

A log is a sequence of blocks, each introduced by its own header line: board, map settings,
planetary conditions, unit-state snapshots, move rows, attack rows and minefields. Lines are
classified in one pass; the data rows of each kind are then parsed in bulk by pyarrow.
"""
from __future__ import annotations

import bisect
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# The columns the reader keeps, in the names of the March-April 2025 logs (the shared corpus).
# Newer logs name some differently (ALIASES), add the ones after the corpus's last, and may
# order them in any way: columns are always taken by header name.
STATE_COLUMNS = (
    "ROUND PHASE PLAYER_ID ENTITY_ID CHASSIS MODEL TYPE ROLE X Y FACING MP HEAT PRONE AIRBORNE "
    "OFF_BOARD CRIPPLED DESTROYED ARMOR_P INTERNAL_P DONE MAX_RANGE TOTAL_DAMAGE TEAM_ID "
    "ARMOR INTERNAL BV"
).split()
MOVE_COLUMNS = (
    "PLAYER_ID ENTITY_ID CHASSIS MODEL FACING FROM_X FROM_Y TO_X TO_Y HEXES_MOVED DISTANCE "
    "MP_USED MAX_MP MP_P HEAT_P ARMOR_P INTERNAL_P JUMPING PRONE LEGAL STEPS TEAM_ID "
    "CHANCE_OF_FAILURE IS_BOT"
).split()
NEWER_UNIT_COLUMNS = "HAS_ECM ARMOR_FRONT_P ARMOR_LEFT_P ARMOR_RIGHT_P ARMOR_BACK_P".split()  # from May 2025
ALIASES = {"ID": "ENTITY_ID", "AIMING_LOCATION": "AIMING_LOC", "STEP": "STEPS"}
ATTACK_COLUMNS = (
    "ROUND PLAYER_ID ENTITY_ID TYPE ROLE X Y FACING TARGET_PLAYER_ID TARGET_ID TARGET_TYPE "
    "TARGET_ROLE TARGET_X TARGET_Y TARGET_FACING AIMING_LOC AIMING_MODE WEAPON_ID AMMO_ID ATA ATG "
    "GTG GTA TO_HIT TURNS_TO_HIT SPOTTER_ID"
).split()
MINEFIELD_COLUMNS = "ROUND PHASE OBJECT X Y".split()

TEXT_COLUMNS = {
    "PHASE", "CHASSIS", "MODEL", "TYPE", "ROLE", "STEPS", "TARGET_TYPE", "TARGET_ROLE",
    "AIMING_MODE", "OBJECT",
}
INTEGER_COLUMNS = {
    "ROUND", "PLAYER_ID", "ENTITY_ID", "X", "Y", "FACING", "PRONE", "AIRBORNE", "OFF_BOARD", "CRIPPLED",
    "DESTROYED", "DONE", "MAX_RANGE", "TOTAL_DAMAGE", "TEAM_ID", "FROM_X", "FROM_Y", "TO_X", "TO_Y",
    "HEXES_MOVED", "DISTANCE", "MP_USED", "MAX_MP", "JUMPING", "LEGAL", "IS_BOT", "TARGET_PLAYER_ID",
    "TARGET_ID", "TARGET_X", "TARGET_Y", "TARGET_FACING", "AIMING_LOC", "WEAPON_ID", "AMMO_ID", "ATA",
    "ATG", "GTG", "GTA", "TURNS_TO_HIT", "SPOTTER_ID", "HAS_ECM",
}
# Columns a row cannot do without; the rest may be missing from older headers (filled with NaN).
REQUIRED_COLUMNS = {
    "state": {"ROUND", "PLAYER_ID", "ENTITY_ID", "TYPE", "ROLE", "X", "Y", "TEAM_ID"},
    "move": {"PLAYER_ID", "ENTITY_ID", "TO_X", "TO_Y"},
    "attack": {"ROUND", "PLAYER_ID", "ENTITY_ID"},
    "minefield": {"ROUND", "X", "Y"},
}
ALL_COLUMNS = {
    "state": STATE_COLUMNS + NEWER_UNIT_COLUMNS, "move": MOVE_COLUMNS + NEWER_UNIT_COLUMNS,
    "attack": ATTACK_COLUMNS, "minefield": MINEFIELD_COLUMNS,
}

# A header's kind, by a column only that kind has; the first match wins.
HEADER_KINDS = (
    ("OBJECT", "minefield"), ("BOARD_NAME", "board"), ("THEME", "map_settings"), ("TEMPERATURE", "planetary"),
    ("TARGET_ID", "attack"), ("TO_X", "move"), ("PHASE", "state"),
)
VERSION_COLUMN = "VERSION"  # first column of every header since 31 May 2025; rows start with `<Class>.31052025`
# In such a file, a row's kind is in its class name: the 1st, 5th and 6th bytes tell them apart.
VERSIONED_ROW_KINDS = {b"USt": "state", b"UAc": "move", b"UAt": "attack", b"GDa": "minefield"}
FORMATS = {
    "2025-03": "March-April 2025 (the shared corpus): no VERSION column, ENTITY_ID",
    "2025-05": "May 2025: ID, HAS_ECM and per-arc armour, no VERSION column",
    "versioned": "from 31 May 2025 (main line): a VERSION column and <Class>.31052025 rows",
    "split": "the four files board/actions/states/attacks of one game",
}
TEXT_TYPE = pa.string()
NUMBER_PATTERN = r"^\s*[-+]?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(NaN|nan|Infinity|inf)\s*$"


@dataclass(frozen=True)
class Problem:
    """Something in a log that could not be read: the line is skipped, the rest is kept."""
    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


@dataclass
class Board:
    line: int
    name: str
    width: int
    height: int
    rows: list[bytes] = field(repr=False, default_factory=list)  # raw `ROW_i` lines
    # The 2025-03 logs wrote one line per board column (`ROW_x`, H cells); newer ones one per row
    # (`ROW_y`, W cells).
    rows_are_columns: bool = True

    def hexes(self) -> pd.DataFrame:
        """Per hex: x, y, level and a dict of terrain features (parsed on demand)."""
        records = []
        cells_per_line = self.height if self.rows_are_columns else self.width
        for row in self.rows:
            cells = row.decode(errors="replace").split("\t")
            index = int(cells[0][4:])
            for other, cell in enumerate(cells[1:cells_per_line + 1]):
                level, terrain = parse_hex(cell)
                x, y = (index, other) if self.rows_are_columns else (other, index)
                records.append((x, y, level, terrain))
        return pd.DataFrame(records, columns=["x", "y", "level", "terrain"])

    def orient(self, newer_format: bool) -> None:
        """Which way the ROW_ lines run: by their count where W != H, else by the log's format."""
        if self.width != self.height and len(self.rows) in (self.width, self.height):
            self.rows_are_columns = len(self.rows) == self.width
        else:
            self.rows_are_columns = not newer_format


def parse_hex(cell: str) -> tuple[int, dict[str, int]]:
    """`Level: 1  Features: Light Woods; foliage_elev(2, 0); ` -> (1, {'woods': 1, 'foliage_elev': 2})."""
    level_text, _, features_text = cell.partition("Features:")
    level = int(level_text.replace("Level:", "").strip() or 0)
    terrain: dict[str, int] = {}
    for feature in features_text.split(";"):
        feature = feature.strip()
        if not feature:
            continue
        if feature.endswith("Woods"):
            terrain["woods"] = 2 if feature.startswith("Heavy") else 1
        elif feature.startswith("Water, depth:"):
            terrain["water"] = int(feature.rsplit(":", 1)[1])
        else:
            name, _, args = feature.partition("(")
            value = args.split(",")[0].strip(") ") if args else "1"
            terrain[name.strip().lower()] = int(value) if value.lstrip("-").isdigit() else 1
    return level, terrain


@dataclass
class GameLog:
    """One log file read into Arrow tables. Row tables carry the 1-based source `line`;
    text columns are strings; numbers are int64 where the log writes integers, else float64
    (null where the log says NaN)."""
    name: str
    boards: list[Board]
    map_settings: dict[str, str]
    planetary: dict[str, str]
    states: pa.Table  # state rows; `block` = index of the state block, in file order
    blocks: pa.Table  # one row per state block: header line, board (newest board index or -1)
    moves: pa.Table  # move rows; `next_block` = the state block that follows the move
    attacks: pa.Table
    minefields: pa.Table
    problems: list[Problem]
    has_armor_columns: bool  # 27-column state rows (ARMOR, INTERNAL, BV present)
    format: str = "2025-03"  # a key of FORMATS
    moves_file: str = ""  # the file the move rows' lines refer to, when not `name` (split games)


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


class _LogParser:
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

    def feed(self, data: bytes) -> None:
        if not data.endswith(b"\n"):
            data += b"\n"
        buf = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(buf == 10)  # position of each line's \n
        starts = np.concatenate(([0], ends[:-1] + 1))
        stops = ends - (buf[np.maximum(ends - 1, 0)] == 13)  # CRLF: the text ends before \r
        empty = starts >= stops
        self.versioned = data.startswith(b"VERSION\t") or b"\nVERSION\t" in data
        row_kinds = _versioned_row_kinds(buf, starts, empty) if self.versioned else None
        kind_changes = (np.flatnonzero(np.diff(row_kinds)) + 1).tolist() if self.versioned else []  # lines where the kind changes
        is_data = row_kinds > 0 if self.versioned else DATA_FIRST_BYTES[buf[starts]] & ~empty
        headerish = np.flatnonzero(~is_data & ~empty)
        blank_before = np.cumsum(empty)  # blank lines up to and including each line
        known_headers: dict[bytes, _Group] = {}
        rejected = {k: _Group(k, ()) for k in REQUIRED_COLUMNS}  # rows under a header lacking a required column
        latest: dict[str, _Group] = {}  # versioned files: the last header of each kind
        group: _Group | None = None
        consumed = -1  # index of a value row already taken by a one-row block

        def text(i: int) -> str:
            return data[starts[i]:stops[i]].decode(errors="replace")

        def add_rows(target: _Group | None, first: int, stop: int) -> None:  # lines first..stop-1
            if target is None:
                for i in range(first, stop):
                    if not empty[i]:
                        self.problems.append(Problem(self.name, i + 1, f"data row outside any block: {text(i)[:40]!r}"))
            elif blank_before[stop - 1] - (blank_before[first - 1] if first else 0):
                for i in range(first, stop):  # rare: blank lines inside the run
                    if not empty[i]:
                        target.add(data[starts[i]:ends[i] + 1], i + 1, 1)
            else:
                target.add(data[starts[first]:ends[stop - 1] + 1], first + 1, stop - first)

        def data_run(first: int, stop: int) -> None:
            if first >= stop:
                return
            if not self.versioned:
                add_rows(group, first, stop)
                return
            cuts = kind_changes[bisect.bisect_right(kind_changes, first):bisect.bisect_left(kind_changes, stop)]
            for a, b in zip([first, *cuts], [*cuts, stop]):
                if row_kinds[a]:
                    add_rows(latest.get(ROW_KIND_NAMES[row_kinds[a]]), a, b)

        previous = -1
        for i in headerish.tolist():
            if i == consumed:
                previous = i
                continue
            data_run(max(previous + 1, consumed + 1), i)
            previous = i
            raw = data[starts[i]:stops[i]]
            known = known_headers.get(raw)
            if known is not None:  # the header of a data block, seen before in this file
                group = latest[known.kind] = known
                if known.kind == "state":
                    self.state_header_lines.append(i + 1)
                continue
            if raw.startswith(b"#"):
                continue
            body = raw
            if self.versioned:  # `VERSION` before a header's names, `<Class>.31052025` before a row's values
                body = raw.split(b"\t", 1)[1] if b"\t" in raw else b""
            if body.startswith(b"ROW_"):
                if self.boards:
                    self.boards[-1].rows.append(body)
                continue
            if body.startswith(b"COL_"):
                continue
            row = raw.decode(errors="replace")
            header = tuple(ALIASES.get(c, c) for c in row.rstrip("\t").split("\t"))
            names = set(header)
            kind = next((k for column, k in HEADER_KINDS if column in names), None)
            if kind is None or (self.versioned and header[0] != VERSION_COLUMN):
                self.problems.append(Problem(self.name, i + 1, f"unknown header or row starting {row[:30]!r}"))
            elif kind in ("board", "map_settings", "planetary"):
                consumed = i + 1
                if consumed < len(starts):
                    self.single_value(kind, header, text(consumed), i + 2)
            elif missing := REQUIRED_COLUMNS[kind] - names:
                self.problems.append(Problem(self.name, i + 1, f"{kind} header lacks {sorted(missing)}; its rows are skipped"))
                group = latest[kind] = known_headers[raw] = rejected[kind]
            else:
                group = latest[kind] = known_headers[raw] = self.groups.setdefault((kind, header), _Group(kind, header))
                self.newer_columns |= kind in ("state", "move") and bool({"ID", "HAS_ECM"} & set(row.split("\t")))
                if kind == "attack":
                    self.attack_columns = header
                if kind == "state":
                    self.state_header_lines.append(i + 1)
        data_run(max(previous + 1, consumed + 1), len(starts))

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
        return {kind: _infinite_as_missing(_concat(parts[kind], ALL_COLUMNS[kind]), self.name, self.problems)
                for kind in kinds}

    def parse_strict(self, group: _Group) -> pa.Table:
        table, invalid = _parse_group(group, self.name, self.problems)
        for line, row in invalid:
            self.row_problem(group, line, row)
        return table

    def row_problem(self, group: _Group, line: int, row: str) -> None:
        self.problems.append(Problem(
            self.name, line, f"{group.kind} row has {row.count(chr(9)) + 1} fields, header has {group.tabs + 1}"))


def read_log(data: bytes, name: str) -> GameLog:
    """Parse one log. Unreadable lines become `problems`; they never stop the file."""
    if isinstance(data, str):
        data = data.encode()
    parser = _LogParser(name)
    parser.feed(data)
    tables = parser.tables()
    states, moves = tables["state"], tables["move"]
    header_lines = np.asarray(parser.state_header_lines, dtype=np.int64)
    board_lines = np.asarray([b.line for b in parser.boards], dtype=np.int64)
    states = states.add_column(0, "block", pa.array(np.searchsorted(header_lines, _lines(states)) - 1))
    blocks = pa.table({"line": header_lines, "board": np.searchsorted(board_lines, header_lines) - 1})
    move_lines = _lines(moves)
    moves = moves.add_column(0, "next_block", pa.array(np.searchsorted(header_lines, move_lines)))
    moves = moves.add_column(1, "board", pa.array(np.searchsorted(board_lines, move_lines) - 1))
    parser.problems.sort(key=lambda p: p.line)
    for board in parser.boards:
        board.orient(newer_format=parser.format != "2025-03")
    return GameLog(
        name=name, boards=parser.boards, map_settings=parser.singles["map_settings"],
        planetary=parser.singles["planetary"], states=states, blocks=blocks, moves=moves,
        attacks=tables["attack"], minefields=tables["minefield"], problems=parser.problems,
        has_armor_columns=_has_armor_columns(states), format=parser.format,
    )


# --- The split layout: one game in four files ----------------------------------------------------

SPLIT_NAME = re.compile(r"^game_actions_(board|actions|states|attacks)_(\d{8}_\d{6})\.tsv$")
SPLIT_PARTS = ("board", "actions", "states", "attacks")


def split_part(file_name: str) -> tuple[str, str] | None:
    """(part, game name) of a split-layout file, e.g. ('states', 'game_actions_20260914_201500'); else None."""
    match = SPLIT_NAME.match(file_name)
    return (match.group(1), f"game_actions_{match.group(2)}") if match else None


def read_game(files: dict[str, bytes], name: str | None = None) -> GameLog:
    """One game from its file(s): a single log (any layout), or the four files of a split game."""
    if len(files) == 1:
        (file, data), = files.items()
        return read_log(data, name or file)
    parts = {split_part(file)[0]: (file, data) for file, data in files.items() if split_part(file)}
    missing = [part for part in SPLIT_PARTS if part not in parts]
    if missing or len(parts) != len(files):
        raise ValueError(f"not the four files of one split game (missing: {', '.join(missing) or 'none'})")
    return read_split_game(parts, name or split_part(next(iter(files)))[1])


def read_split_game(parts: dict[str, tuple[str, bytes]], name: str) -> GameLog:
    """One game written as four files (part -> (file name, bytes)): boards with map settings and
    planetary conditions, move rows, state rows of all snapshots back to back, attack rows.
    Nothing in them links a move to the snapshot after it, so the reader infers it: a snapshot
    ends where a unit repeats or the round or phase changes, and the moves pair up in order with
    the movement-phase snapshots (each move is followed by one), skipping snapshots where the
    moving unit's positions fit better. Problems name the part's own file and line."""
    parsers, tables, problems = {}, {}, []
    for part, kind in zip(SPLIT_PARTS, (None, "move", "state", "attack")):
        file, data = parts[part]
        parsers[part] = parser = _LogParser(file)
        parser.feed(data if isinstance(data, bytes) else data.encode())
        if kind:
            tables[kind] = parser.tables(kinds=(kind,))[kind]
        problems += sorted(parser.problems, key=lambda p: p.line)
    states, moves = tables["state"], tables["move"]
    boards = parsers["board"].boards
    for board in boards:
        board.orient(newer_format=True)
    block = _snapshots(states)
    states = states.add_column(0, "block", pa.array(block))
    n_blocks = int(block[-1]) + 1 if len(block) else 0
    first_rows = np.searchsorted(block, np.arange(n_blocks))
    block_boards = _boards_of_blocks(column_numbers(states, "ROUND")[first_rows], len(boards), name, problems)
    blocks = pa.table({"line": _lines(states)[first_rows], "board": block_boards})
    next_block = _pair_moves_with_snapshots(moves, states, block, first_rows)
    moves = moves.add_column(0, "next_block", pa.array(next_block))
    moves = moves.add_column(1, "board", pa.array(np.append(block_boards, len(boards) - 1)[next_block]))
    return GameLog(
        name=name, boards=boards, map_settings=parsers["board"].singles["map_settings"],
        planetary=parsers["board"].singles["planetary"], states=states, blocks=blocks, moves=moves,
        attacks=tables["attack"], minefields=_concat([], MINEFIELD_COLUMNS), problems=problems,
        has_armor_columns=_has_armor_columns(states), format="split", moves_file=parts["actions"][0],
    )


def _has_armor_columns(states: pa.Table) -> bool:
    """Every state row has BV (27-column rows or newer), so ARMOR, INTERNAL and BV are there."""
    return states.num_rows > 0 and states["BV"].null_count == 0 and not pc.any(pc.is_nan(states["BV"])).as_py()


def column_numbers(table: pa.Table, column: str) -> np.ndarray:
    """A column as float64 (null -> NaN)."""
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def _snapshots(states: pa.Table) -> np.ndarray:
    """Snapshot index per state row: a new snapshot starts where a unit appears a second time, or
    the round or the phase changes."""
    entities = states["ENTITY_ID"].to_pylist()
    rounds = states["ROUND"].to_pylist()
    phases = states["PHASE"].to_pylist()
    block = np.zeros(len(entities), dtype=np.int64)
    current, seen = 0, set()
    for i, entity in enumerate(entities):
        if i and (entity in seen or rounds[i] != rounds[i - 1] or phases[i] != phases[i - 1]):
            current, seen = current + 1, set()
        seen.add(entity)
        block[i] = current
    return block


def _boards_of_blocks(block_rounds: np.ndarray, n_boards: int, name: str, problems: list[Problem]) -> np.ndarray:
    """Board index per snapshot. A falling round starts a new game; with as many boards as games
    they pair in order, otherwise every snapshot uses the newest board."""
    games = np.concatenate(([0], np.cumsum(block_rounds[1:] < block_rounds[:-1]))).astype(np.int64)
    n_games = int(games[-1]) + 1 if len(games) else 0
    if n_boards == n_games:
        return games
    if n_boards > 1:
        problems.append(Problem(name, 0, f"{n_boards} boards for {n_games} games (a game starts where the round "
                                         "falls): every snapshot uses the last board"))
    return np.full(len(block_rounds), n_boards - 1, dtype=np.int64)


def _pair_moves_with_snapshots(moves: pa.Table, states: pa.Table, block: np.ndarray, first_rows: np.ndarray) -> np.ndarray:
    """The snapshot logged after each move: moves and movement-phase snapshots pair up in order;
    where there are more snapshots than moves, the skipped ones are those that leave the fewest
    movers away from where their move ended (dynamic programming over the number skipped so far)."""
    n_blocks = len(first_rows)
    phases = np.asarray(states["PHASE"].to_pylist(), dtype=object)[first_rows] if n_blocks else np.array([])
    candidates = np.flatnonzero(phases == "MOVEMENT")
    n, m = moves.num_rows, len(candidates)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if m <= n:  # every snapshot follows a move; moves after the last snapshot have none
        return np.concatenate((candidates, np.full(n - m, n_blocks))).astype(np.int64)
    skips = m - n
    slot = np.arange(n)[:, None] + np.arange(skips + 1)[None, :]  # move i -> candidate i + s
    snapshot = candidates[slot]
    keys = block * (1 << 32) + states["ENTITY_ID"].to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    wanted = snapshot * (1 << 32) + moves["ENTITY_ID"].to_numpy(zero_copy_only=False).astype(np.int64)[:, None]
    position = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
    row = order[position]
    found = keys[row] == wanted
    x, y = column_numbers(states, "X")[row], column_numbers(states, "Y")[row]
    to_x, to_y = column_numbers(moves, "TO_X")[:, None], column_numbers(moves, "TO_Y")[:, None]
    cost = (~(found & (x == to_x) & (y == to_y))).astype(np.int64)
    total = np.empty_like(cost)
    total[0] = cost[0]
    for i in range(1, n):  # skips so far never decrease
        total[i] = cost[i] + np.minimum.accumulate(total[i - 1])
    chosen = np.empty(n, dtype=np.int64)
    chosen[-1] = int(np.argmin(total[-1]))
    for i in range(n - 2, -1, -1):
        chosen[i] = int(np.argmin(total[i, :chosen[i + 1] + 1]))
    return candidates[np.arange(n) + chosen].astype(np.int64)


def _infinite_as_missing(table: pa.Table, name: str, problems: list[Problem]) -> pa.Table:
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


def _lines(table: pa.Table) -> np.ndarray:
    return table["line"].to_numpy()


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


def _concat(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    if not tables:
        return pa.schema([("line", pa.int64())] + [
            (c, TEXT_TYPE if c in TEXT_COLUMNS else pa.float64()) for c in columns]).empty_table()
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    return table.take(pc.sort_indices(table["line"]))
