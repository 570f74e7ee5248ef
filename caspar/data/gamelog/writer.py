"""Write a game in the layouts MegaMek's dataset logger writes today (../shared/LOGFORMAT.md).

`rewrite(data, layout)` takes a log in any layout the reader knows and writes the same game as
MegaMek would from May 2025 on: "2025-05" (new columns, no VERSION), "versioned" (the main
line's single file) or "split" (four files). Columns the old logs never carried get MegaMek's
own value for "unknown" (section 9 of LOGFORMAT.md). Tests and benchmarks use it to check that
a game reads the same in every layout; `python -m caspar.data.gamelog.writer` converts files.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from caspar.data.gamelog.log import Board, GameLog
from caspar.data.gamelog.reader import read_log

VERSION_SUFFIX = ".31052025"
STATE = ("ID PHASE TEAM_ID ROUND PLAYER_ID CHASSIS MODEL TYPE ROLE X Y FACING MP HEAT PRONE AIRBORNE OFF_BOARD "
         "CRIPPLED DESTROYED ARMOR_P INTERNAL_P DONE MAX_RANGE TOTAL_DAMAGE ARMOR INTERNAL BV IS_BOT HAS_ECM "
         "ARMOR_FRONT_P ARMOR_LEFT_P ARMOR_RIGHT_P ARMOR_BACK_P WEAPON_DMG_FACING_SHORT_MEDIUM_LONG_RANGE").split()
MOVE = ("ID TEAM_ID PLAYER_ID CHASSIS MODEL FACING FROM_X FROM_Y TO_X TO_Y HEXES_MOVED DISTANCE MP_USED MAX_MP "
        "MP_P HEAT_P ARMOR_P INTERNAL_P JUMPING PRONE LEGAL CHANCE_OF_FAILURE STEPS IS_BOT HAS_ECM ARMOR INTERNAL "
        "BV MAX_RANGE TOTAL_DAMAGE ARMOR_FRONT_P ARMOR_LEFT_P ARMOR_RIGHT_P ARMOR_BACK_P ROLE "
        "WEAPON_DMG_FACING_SHORT_MEDIUM_LONG_RANGE MOVEMENT_TYPE").split()
# The split (CASPAR) line's move rows: crew skills and role-awareness columns besides.
MOVE_SPLIT = (MOVE[:16] + ["GUNNERY", "PILOTING"] + MOVE[16:35]
              + "OPTIMAL_RANGE THREAT_WEIGHT MOVE_ORDER_MULT DIST_TO_CLOSEST_ENEMY AS_SIZE AS_DMG_S AS_DMG_M AS_DMG_L HAS_MEL".split()
              + MOVE[35:])
ATTACK = ("ROUND ENTITY_ID PLAYER_ID TYPE ROLE X Y FACING TARGET_PLAYER_ID TARGET_ID TARGET_TYPE TARGET_ROLE TARGET_X "
          "TARGET_Y TARGET_FACING AIMING_LOCATION AIMING_MODE WEAPON_ID AMMO_ID ATA ATG GTG GTA TO_HIT TURNS_TO_HIT "
          "SPOTTER_ID").split()
MINEFIELD = "ROUND PHASE OBJECT X Y TYPE PLAYER_ID DAMAGE".split()
MAP_SETTINGS = "THEME CITY_TYPE MAP_SIZE MAP_WIDTH MAP_HEIGHT".split()
PLANETARY = "TEMPERATURE WEATHER GRAVITY WIND ATMOSPHERE FOG LIGHT".split()
# Columns written as "0.00" (Java doubles); every other number is an integer.
DECIMAL = {"MP_P", "HEAT_P", "ARMOR_P", "INTERNAL_P", "CHANCE_OF_FAILURE", "ARMOR_FRONT_P", "ARMOR_LEFT_P",
           "ARMOR_RIGHT_P", "ARMOR_BACK_P", "GRAVITY"}
OLD_NAMES = {"ID": "ENTITY_ID", "AIMING_LOCATION": "AIMING_LOC"}
ARCS = ("ARMOR_FRONT_P", "ARMOR_LEFT_P", "ARMOR_RIGHT_P", "ARMOR_BACK_P")
ARCS_FROM_INTERNAL = {"Infantry", "BattleArmor", "MekWarrior", "EjectedCrew"}  # MegaMek reports INTERNAL_P per arc
ENUM_NAMES = {  # planetary display strings of the old logs -> enum names
    "WIND": {"Calm": "CALM", "Light Gale": "LIGHT_GALE", "Moderate Gale": "MOD_GALE", "Strong Gale": "STRONG_GALE",
             "Storm": "STORM", "Tornado F1-F3": "TORNADO_F1_TO_F3", "Tornado F4": "TORNADO_F4"},
    "ATMOSPHERE": {"Vacuum": "VACUUM", "Trace": "TRACE", "Thin": "THIN", "Standard": "STANDARD", "High": "HIGH",
                   "Very High": "VERY_HIGH"},
    "FOG": {"None": "FOG_NONE", "Light Fog": "FOG_LIGHT", "Heavy Fog": "FOG_HEAVY"},
    "LIGHT": {"Daylight": "DAY", "Dusk/Dawn": "DUSK_DAWN", "Full Moon Night": "FULL_MOON", "Glare": "GLARE",
              "Moonless Night": "MOONLESS", "Solar Flare": "SOLAR_FLARE", "Pitch Black": "PITCH_BLACK"},
}
LAYOUTS = ("2025-05", "versioned", "split")
# Features that read what the layouts carry differently (per-arc armour, ECM, CHANCE_OF_FAILURE's
# meaning): a game rewritten by `rewrite` gives the same values in every other feature.
FORMAT_DEPENDENT_FEATURES = {"unit_health_front", "unit_health_right", "unit_health_left", "unit_health_back",
                             "ecm_coverage", "enemy_ecm_coverage", "piloting_caution", "chance_of_failure"}


def rewrite(data: bytes, layout: str, *, crlf: bool = False, timestamp: str = "20250403_012744") -> dict[str, bytes]:
    """The game of `data` in `layout`: file name -> bytes (one file, or four for "split").
    With `crlf`, lines end as a Windows build writes them: LF inside a block, CRLF after it.

    Args:
        data: a log's bytes (any layout).
        layout: one of LAYOUTS.
        crlf: Windows line ends.
        timestamp: the file's creation time (and a split game's file names), YYYYMMDD_HHMMSS.

    Returns:
        {file name: bytes}.

    Raises:
        ValueError: an unknown layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    log = read_log(data, "input")
    writer = _Writer(log, versioned=layout != "2025-05", split=layout == "split")
    end = "\r\n" if crlf else "\n"
    if layout != "split":
        blocks = [f"# Log file created at {_created(timestamp)}"] + [text for _, text in sorted(writer.events())]
        return {f"game_actions_{timestamp}.tsv": (end.join(blocks) + end).encode()}
    parts = writer.split_parts()
    return {f"game_actions_{part}_{timestamp}.tsv":
            (end.join([f"# {part.upper()} log file created at {_created(timestamp)}", *blocks]) + end).encode()
            for part, blocks in parts.items()}


def _created(timestamp: str) -> str:
    d, t = timestamp.split("_")
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}.000000000"


class _Writer:
    def __init__(self, log: GameLog, versioned: bool, split: bool):
        self.log, self.versioned, self.split = log, versioned, split
        moves = log.moves
        bots = {}
        for player, bot in zip(moves["PLAYER_ID"].to_pylist(), moves["IS_BOT"].to_pylist()):
            bots[player] = bots.get(player) or bot == 1
        self.bot_players = {p for p, bot in bots.items() if bot}

    # -- one block of lines each, keyed by the source line for the single-file order

    def events(self) -> list[tuple[int, str]]:
        log = self.log
        events = [(board.line, self.board_block(board)) for board in log.boards]
        states = log.states
        block = states["block"].to_numpy()
        for index, start in enumerate(np.searchsorted(block, np.arange(log.blocks.num_rows))):
            stop = np.searchsorted(block, index, "right")
            events.append((int(log.blocks["line"][index].as_py()),
                           self.block("UnitState", STATE, [self.state_row(r) for r in _rows(states.slice(start, stop - start))])))
        for row in _rows(log.moves):
            events.append((row["line"], self.block("UnitAction", MOVE, [self.move_row(row)])))
        for kind, columns, table, convert in (("UnitAttack", ATTACK, log.attacks, self.attack_row),
                                              ("GameData", MINEFIELD, log.minefields, self.minefield_row)):
            for run in _runs(_rows(table)):
                events.append((run[0]["line"], self.block(kind, columns, [convert(r) for r in run])))
        return events

    def split_parts(self) -> dict[str, list[str]]:
        log = self.log
        return {
            "board": [self.board_block(board) for board in log.boards],
            "actions": [self.block("UnitAction", MOVE_SPLIT, [self.move_row(r) for r in _rows(log.moves)])],
            "states": [self.block("UnitState", STATE, [self.state_row(r) for r in _rows(log.states)])],
            "attacks": [self.block("UnitAttack", ATTACK, [self.attack_row(r) for r in _rows(log.attacks)])],
        }

    def block(self, kind: str, columns: list[str], rows: list[dict]) -> str:
        """A header and its rows, joined by LF (MegaMek writes a block in one call)."""
        header, prefix = ("VERSION\t", f"{kind}{VERSION_SUFFIX}\t") if self.versioned else ("", "")
        lines = [header + "\t".join(columns)]
        lines += [prefix + "\t".join(_text(row.get(c), c) for c in columns) for row in rows]
        return "\n".join(lines)

    def board_block(self, board: Board) -> str:
        """Board (rows are board rows now), then map settings and planetary conditions."""
        cells = {}
        for line in board.rows:
            values = line.decode(errors="replace").split("\t")
            index = int(values[0][4:])
            for other, cell in enumerate(values[1:]):
                cells[(index, other) if board.rows_are_columns else (other, index)] = cell
        prefix = f"BoardData{VERSION_SUFFIX}\t" if self.versioned else ""
        header = "VERSION\t" if self.versioned else ""
        lines = [f"{header}BOARD_NAME\tWIDTH\tHEIGHT", f"{prefix}{board.name}\t{board.width}\t{board.height}",
                 header + "\t".join(f"COL_{x}" for x in range(board.width))]
        lines += [f"{prefix}ROW_{y}\t" + "\t".join(cells.get((x, y), "") for x in range(board.width))
                  for y in range(board.height)]
        board_text = "\n".join(lines)
        settings = self.log.map_settings
        values = list(settings.values())
        map_row = {"THEME": values[0] if values else "", "CITY_TYPE": values[1] if len(values) > 1 else "",
                   "MAP_SIZE": "", "MAP_WIDTH": values[2] if len(values) > 2 else "",
                   "MAP_HEIGHT": values[3] if len(values) > 3 else ""}
        planetary = {k: ENUM_NAMES.get(k, {}).get(v, v) for k, v in self.log.planetary.items()}
        if "GRAVITY" in planetary:
            planetary["GRAVITY"] = f"{float(planetary['GRAVITY'].replace(',', '.')):.2f}"
        return "\n".join([board_text, self.block("MapSettingsData", MAP_SETTINGS, [map_row]),
                          self.block("PlanetaryConditionsData", PLANETARY, [planetary])])

    # -- rows: old column names -> new ones, MegaMek's values for what the old logs lack

    def state_row(self, row: dict) -> dict:
        new = {c: row.get(OLD_NAMES.get(c, c)) for c in STATE}
        new.update(IS_BOT=int(row["PLAYER_ID"] in self.bot_players), HAS_ECM=0, **self.arcs(row, row["TYPE"]))
        return new

    def move_row(self, row: dict) -> dict:
        new = {c: row.get(OLD_NAMES.get(c, c)) for c in MOVE_SPLIT if c not in ("ARMOR", "INTERNAL", "BV", "ROLE")}
        steps = row.get("STEPS") or ""
        new.update(CHANCE_OF_FAILURE=1.0, HAS_ECM=0, STEPS=steps, **self.arcs(row, None),
                   MOVEMENT_TYPE="MOVE_JUMP" if row.get("JUMPING") == 1 else "" if steps else "MOVE_NONE")
        if self.split:
            new.update(GUNNERY=4, PILOTING=5)
        return new

    @staticmethod
    def arcs(row: dict, unit_type: str | None) -> dict:
        value = row.get("INTERNAL_P") if unit_type in ARCS_FROM_INTERNAL else row.get("ARMOR_P")
        return dict.fromkeys(ARCS, value)

    @staticmethod
    def attack_row(row: dict) -> dict:
        new = {c: row.get(OLD_NAMES.get(c, c)) for c in ATTACK}
        physical = new["WEAPON_ID"] == -1 and not any(new[f] for f in ("ATA", "ATG", "GTG", "GTA"))
        if not (physical and new["TO_HIT"] == 0):
            new["TO_HIT"] = None if new["TO_HIT"] is None else int(new["TO_HIT"])
        return new

    @staticmethod
    def minefield_row(row: dict) -> dict:
        return {c: row.get(c) for c in MINEFIELD}


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def _runs(rows: list[dict]) -> list[list[dict]]:
    """Rows on consecutive lines, each run one block with one header."""
    runs: list[list[dict]] = []
    for row in rows:
        if runs and row["line"] == runs[-1][-1]["line"] + 1:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _text(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if column in DECIMAL or (isinstance(value, float) and not value.is_integer()):
        return f"{value:.2f}"
    return str(int(value))


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Rewrite game logs in a newer MegaMek layout.")
    parser.add_argument("logs", nargs="+", type=Path, help="log files, or folders searched for *.tsv")
    parser.add_argument("--layout", choices=LAYOUTS, default="versioned")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--crlf", action="store_true")
    args = parser.parse_args()
    logs = [log for path in args.logs for log in (sorted(path.rglob("*.tsv")) if path.is_dir() else [path])]
    missing = [path for path in logs if not path.is_file()]
    if missing or not logs:
        parser.exit(2, f"writer: error: {missing[0] if missing else ' '.join(map(str, args.logs))}: "
                       f"{'no such file' if missing else 'no *.tsv log there'}\n")
    args.logs = logs
    args.output.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(args.logs):
        stamp = f"20250101_{number // 3600 % 24:02d}{number // 60 % 60:02d}{number % 60:02d}"
        for name, content in rewrite(path.read_bytes(), args.layout, crlf=args.crlf, timestamp=stamp).items():
            (args.output / name).write_bytes(content)
    print(f"wrote {len(args.logs)} games to {args.output}")
