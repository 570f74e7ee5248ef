"""The features in MegaMek's Java (java/src/caspar/CasparFeatures.java), checked against ours.

`write_decisions` writes, for every row a log gives, the records the Java features read (the
move's action record, the mover's and every unit's state record, the board's size) with the
logger's field names and the values as read from the log; `CasparTool features` computes the 354
features from them. The game builds the same records with `UnitAction.fromMovePath` and
`UnitState.fromEntity`; the logs are the records of real games.
"""
from __future__ import annotations

import math
import subprocess

import numpy as np

from caspar.data.features import Rows, featurize, select_moves
from caspar.data.features.situation import Game
from caspar.data.features.units import UnitPoints
from caspar.data.gamelog import GameLog
from caspar.data.gamelog.log import column_numbers
from caspar.errors import UserError

FORMAT = "caspar-decisions 1"
ARCS = ["ARMOR_FRONT_P", "ARMOR_RIGHT_P", "ARMOR_LEFT_P", "ARMOR_BACK_P"]
ACTION_FIELDS = ["ID", "TEAM_ID", "PLAYER_ID", "FACING", "FROM_X", "FROM_Y", "TO_X", "TO_Y", "HEXES_MOVED", "DISTANCE",
                 "MP_USED", "MAX_MP", "MP_P", "HEAT_P", "ARMOR_P", "INTERNAL_P", "JUMPING", "PRONE",
                 "CHANCE_OF_FAILURE", *ARCS]
UNIT_FIELDS = ["ID", "PLAYER_ID", "TEAM_ID", "TYPE", "ROLE", "X", "Y", "FACING", "MP", "HEAT", "OFF_BOARD",
               "DESTROYED", "CRIPPLED", "ARMOR_P", "INTERNAL_P", "MAX_RANGE", "TOTAL_DAMAGE", "ARMOR", "INTERNAL",
               "HAS_ECM", *ARCS]
TEXT_FIELDS = {"TYPE", "ROLE"}
COLUMN_OF = {"ID": "ENTITY_ID"}  # the reader's name of a logger field, where it differs


def _cell(value: float) -> str:
    """A float64 written so that Java's Double.parseDouble reads back the same double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _lines(table, fields: list[str], overrides: dict[str, np.ndarray] | None = None) -> list[str]:
    """One tab-separated line of `fields` per row of a GameLog table."""
    columns = []
    for field in fields:
        column = COLUMN_OF.get(field, field)
        if overrides and field in overrides:
            columns.append([_cell(v) for v in overrides[field].tolist()])
        elif column not in table.column_names:
            columns.append(["" if field in TEXT_FIELDS else "NaN"] * table.num_rows)
        elif field in TEXT_FIELDS:
            texts = table[column].to_numpy(zero_copy_only=False)
            columns.append(["" if t is None else str(t).replace("\t", " ") for t in texts])
        else:
            columns.append([_cell(v) for v in column_numbers(table, column).tolist()])
    return ["\t".join(cells) for cells in zip(*columns)] if columns else []


def write_decisions(log: GameLog, points: UnitPoints, handle, include_bots: bool = False) -> Rows:
    """Appends the decisions of one log (every move that becomes a row) to `handle` (text) and
    returns the log's rows as `caspar.data.features.featurize` computes them.

    Hit points: a state row without ARMOR and INTERNAL (24-column logs) gets the reader's estimate
    of its current points (FEATURES.md §7) as ARMOR and 0 as INTERNAL; the game always has both.

    Args:
        log: a parsed GameLog.
        points: the units' full armour and internal points.
        handle: an open text file.
        include_bots: the bot's moves too.

    Returns:
        The log's Rows.
    """
    game = Game(log, points)
    move_rows, me_rows, _ = select_moves(game, include_bots)
    armor, internal = column_numbers(log.states, "ARMOR"), column_numbers(log.states, "INTERNAL")
    estimated = ~np.isfinite(armor + internal)
    overrides = {"ARMOR": np.where(estimated, game.hp, armor), "INTERNAL": np.where(estimated, 0.0, internal)}
    unit_lines = _lines(log.states, UNIT_FIELDS, overrides)
    action_lines = _lines(log.moves, ACTION_FIELDS)
    widths = [b.width for b in log.boards] + [game.default_board[0]]
    heights = [b.height for b in log.boards] + [game.default_board[1]]
    board = log.moves["board"].to_numpy()
    block = log.moves["next_block"].to_numpy()
    out = []
    for move, me in zip(move_rows.tolist(), me_rows.tolist()):
        start, end = game.block_start[block[move]], game.block_end[block[move]]
        out.append(f"decision\t{log.name}\t{move}\t{widths[board[move]]}\t{heights[board[move]]}\t{end - start}")
        out.append("action\t" + action_lines[move])
        out.append("mover\t" + unit_lines[me])
        out.extend("unit\t" + line for line in unit_lines[start:end])
    handle.write("\n".join(out) + ("\n" if out else ""))
    return featurize(log, points, include_bots)


def header() -> str:
    """Returns a decisions file's first lines: its format and the fields of its records."""
    return "\n".join([FORMAT, "fields\taction\t" + "\t".join(ACTION_FIELDS),
                      "fields\tunit\t" + "\t".join(UNIT_FIELDS)]) + "\n"


def features_in_java(decisions: str, output: str, classes: str) -> np.ndarray:
    """CasparFeatures (Java) on every decision of a file.

    Args:
        decisions: the decisions file.
        output: where CasparTool writes the features (little-endian float32).
        classes: the compiled Java package.

    Returns:
        [decisions, 354] float32.

    Raises:
        UserError: CasparTool failed (its last line).
    """
    result = subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "features", decisions, output],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise UserError(f"CasparTool features failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return np.fromfile(output, dtype="<f4").reshape(-1, 354)


def scores_in_java(export: str, decisions: str, output: str, classes: str) -> np.ndarray:
    """The export's CasparModel on CasparFeatures of every decision of a file.

    Args:
        export: the export's folder.
        decisions: the decisions file.
        output: where CasparTool writes the scores.
        classes: the compiled Java package.

    Returns:
        [decisions] float64.

    Raises:
        UserError: CasparTool failed (its last line).
    """
    result = subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "score", export, decisions, output],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise UserError(f"CasparTool score failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return np.fromfile(output, dtype="<f4").astype(np.float64)


def write_decisions_file(logs, path: str, points: UnitPoints) -> dict[tuple[str, int], np.ndarray]:
    """Every decision of some logs in one file.

    Args:
        logs: parsed GameLogs.
        path: the file written.
        points: the units' full armour and internal points.

    Returns:
        {(game, move index): [354] our features of that decision}.
    """
    expected = {}
    with open(path, "w") as handle:
        handle.write(header())
        for log in logs:
            rows = write_decisions(log, points, handle)
            expected.update({(log.name, m): f for m, f in zip(rows.move_index.tolist(), rows.features)})
    return expected


def decision_keys(path: str) -> list[tuple[str, int]]:
    """The decisions of a file.

    Args:
        path: a decisions file.

    Returns:
        (game, move index) of each decision, in order.
    """
    with open(path) as handle:
        return [(cells[1], int(cells[2])) for cells in (line.split("\t", 3) for line in handle) if cells[0] == "decision"]
