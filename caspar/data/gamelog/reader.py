"""Read one MegaMek game log (the game dataset logger's TSV) into typed tables.

A log is a sequence of blocks, each introduced by its own header line: board, map settings,
planetary conditions, unit-state snapshots, move rows, attack rows and minefields. Lines are
classified in one pass; the data rows of each kind are then parsed in bulk by pyarrow.
"""

import numpy as np
import pyarrow as pa

from caspar.data.gamelog.log import GameLog, has_armor_columns, lines
from caspar.data.gamelog.parser import LogParser
from caspar.data.gamelog.split import SPLIT_PARTS, read_split_game, split_part


def read_log(data: bytes, name: str) -> GameLog:
    """Parses one log. Unreadable lines become `problems`; they never stop the file.

    Args:
        data: the file's bytes (a str is encoded).
        name: its name, in problems.

    Returns:
        The GameLog.
    """
    if isinstance(data, str):
        data = data.encode()
    parser = LogParser(name)
    parser.feed(data)
    tables = parser.tables()
    states, moves = tables["state"], tables["move"]
    header_lines = np.asarray(parser.state_header_lines, dtype=np.int64)
    board_lines = np.asarray([b.line for b in parser.boards], dtype=np.int64)
    states = states.add_column(0, "block", pa.array(np.searchsorted(header_lines, lines(states)) - 1))
    blocks = pa.table({"line": header_lines, "board": np.searchsorted(board_lines, header_lines) - 1})
    move_lines = lines(moves)
    moves = moves.add_column(0, "next_block", pa.array(np.searchsorted(header_lines, move_lines)))
    moves = moves.add_column(1, "board", pa.array(np.searchsorted(board_lines, move_lines) - 1))
    parser.problems.sort(key=lambda p: p.line)
    for board in parser.boards:
        board.orient(newer_format=parser.format != "2025-03")
    return GameLog(
        name=name, boards=parser.boards, map_settings=parser.singles["map_settings"],
        planetary=parser.singles["planetary"], states=states, blocks=blocks, moves=moves,
        attacks=tables["attack"], minefields=tables["minefield"], problems=parser.problems,
        has_armor_columns=has_armor_columns(states), format=parser.format,
    )


def read_game(files: dict[str, bytes], name: str | None = None) -> GameLog:
    """One game from its file(s).

    Args:
        files: {file name: bytes}: a single log (any layout), or the four files of a split game.
        name: the game's name (the file's, or the split game's, if None).

    Returns:
        The GameLog.

    Raises:
        ValueError: several files that are not the four parts of one split game.
    """
    if len(files) == 1:
        (file, data), = files.items()
        return read_log(data, name or file)
    parts = {split_part(file)[0]: (file, data) for file, data in files.items() if split_part(file)}
    missing = [part for part in SPLIT_PARTS if part not in parts]
    if missing or len(parts) != len(files):
        raise ValueError(f"not the four files of one split game (missing: {', '.join(missing) or 'none'})")
    return read_split_game(parts, name or split_part(next(iter(files)))[1])
