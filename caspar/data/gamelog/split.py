"""The split layout: one game written as four files (board, actions, states, attacks), read into
one GameLog. Nothing in the files links a move to the state snapshot after it: the reader infers it."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from caspar.data.gamelog.log import MINEFIELD_COLUMNS, GameLog, Problem, column_numbers, has_armor_columns, lines
from caspar.data.gamelog.parser import LogParser
from caspar.data.gamelog.tables import concat

SPLIT_NAME = re.compile(r"^game_actions_(board|actions|states|attacks)_(\d{8}_\d{6})\.tsv$")
SPLIT_PARTS = ("board", "actions", "states", "attacks")


def split_part(file_name: str) -> tuple[str, str] | None:
    """Which part of a split game a file is.

    Args:
        file_name: a file's name.

    Returns:
        (part, game name), e.g. ('states', 'game_actions_20260914_201500'); None for another file.
    """
    match = SPLIT_NAME.match(file_name)
    return (match.group(1), f"game_actions_{match.group(2)}") if match else None


def read_split_game(parts: dict[str, tuple[str, bytes]], name: str) -> GameLog:
    """One game written as four files (part -> (file name, bytes)): boards with map settings and
    planetary conditions, move rows, state rows of all snapshots back to back, attack rows.
    Nothing in them links a move to the snapshot after it, so the reader infers it: a snapshot
    ends where a unit repeats or the round or phase changes, and the moves pair up in order with
    the movement-phase snapshots (each move is followed by one), skipping snapshots where the
    moving unit's positions fit better. Problems name the part's own file and line.

    Args:
        parts: {part: (file name, bytes)}, the four parts.
        name: the game's name.

    Returns:
        The GameLog.
    """
    parsers, tables, problems = {}, {}, []
    for part, kind in zip(SPLIT_PARTS, (None, "move", "state", "attack")):
        file, data = parts[part]
        parsers[part] = parser = LogParser(file)
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
    blocks = pa.table({"line": lines(states)[first_rows], "board": block_boards})
    next_block = _pair_moves_with_snapshots(moves, states, block, first_rows)
    moves = moves.add_column(0, "next_block", pa.array(next_block))
    moves = moves.add_column(1, "board", pa.array(np.append(block_boards, len(boards) - 1)[next_block]))
    return GameLog(
        name=name, boards=boards, map_settings=parsers["board"].singles["map_settings"],
        planetary=parsers["board"].singles["planetary"], states=states, blocks=blocks, moves=moves,
        attacks=tables["attack"], minefields=concat([], MINEFIELD_COLUMNS), problems=problems,
        has_armor_columns=has_armor_columns(states), format="split", moves_file=parts["actions"][0],
    )


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
