"""What a MegaMek game log holds once read: the columns kept, the log formats, and the GameLog
(typed tables of unit states, moves, attacks and minefields, with the boards and problems found)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
# What MegaMek writes as a role (ROLE, TARGET_ROLE): its UnitRole names, upper case, in the order
# of the features' one-hot columns.
UNIT_ROLES = (
    "UNDETERMINED", "NONE", "AMBUSHER", "BRAWLER", "JUGGERNAUT", "MISSILE_BOAT", "SCOUT",
    "SKIRMISHER", "SNIPER", "STRIKER", "ATTACK_FIGHTER", "DOGFIGHTER", "FAST_DOGFIGHTER",
    "FIRE_SUPPORT", "INTERCEPTOR", "TRANSPORT",
)
ROLE_COLUMNS = ("ROLE", "TARGET_ROLE")
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
    """A board as the log gives it: its size, and its ROW_ lines (parsed into hexes on demand)."""
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
        """Which way the ROW_ lines run: by their count where W != H, else by the log's format.

        Args:
            newer_format: the log's layout writes one line per board row (versioned, split).
        """
        if self.width != self.height and len(self.rows) in (self.width, self.height):
            self.rows_are_columns = len(self.rows) == self.width
        else:
            self.rows_are_columns = not newer_format


def parse_hex(cell: str) -> tuple[int, dict[str, int]]:
    """One board cell.

    Args:
        cell: e.g. `Level: 1  Features: Light Woods; foliage_elev(2, 0); `.

    Returns:
        (level, terrain), e.g. (1, {'woods': 1, 'foliage_elev': 2}).
    """
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


def has_armor_columns(states: pa.Table) -> bool:
    """Whether the unit states carry their hit points.

    Args:
        states: the log's state rows.

    Returns:
        True where every state row has BV (27-column rows or newer), so ARMOR, INTERNAL and BV are there.
    """
    return states.num_rows > 0 and states["BV"].null_count == 0 and not pc.any(pc.is_nan(states["BV"])).as_py()


def column_numbers(table: pa.Table, column: str) -> np.ndarray:
    """A column as numbers.

    Args:
        table: rows.
        column: its name.

    Returns:
        [rows] float64, null as NaN.
    """
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def lines(table: pa.Table) -> np.ndarray:
    """The source lines of a table's rows.

    Args:
        table: rows with a "line" column.

    Returns:
        [rows] 1-based lines.
    """
    return table["line"].to_numpy()
