"""Synthetic game logs: format-valid logs of simple, random games.

They only exercise the pipeline (tests, `make demo` on a machine without real logs); their
moves are random walks, not play worth learning from. Seeded: same seed, same files.
"""
from __future__ import annotations

import random
from pathlib import Path

from caspar.data.gamelog.log import ATTACK_COLUMNS, MINEFIELD_COLUMNS, MOVE_COLUMNS, STATE_COLUMNS

UNITS = [  # chassis, model, type, role, max range, damage, armour, internal, BV
    ("Atlas", "AS7-D", "BipedMek", "JUGGERNAUT", 18, 60, 304, 152, 1897),
    ("Hunchback", "HBK-4G", "BipedMek", "BRAWLER", 12, 38, 160, 83, 1041),
    ("Catapult", "CPLT-C1", "BipedMek", "MISSILE_BOAT", 21, 40, 169, 83, 1399),
    ("Jenner", "JR7-D", "BipedMek", "STRIKER", 9, 20, 69, 36, 875),
    ("Locust", "LCT-1V", "BipedMek", "SCOUT", 18, 12, 32, 26, 432),
    ("Rifleman", "RFL-3N", "BipedMek", "SNIPER", 24, 30, 128, 96, 1039),
    ("Scorpion Light Tank", "(Standard)", "Tank", "SKIRMISHER", 18, 14, 64, 16, 420),
    ("Elemental Battle Armor", "[Laser](Sqd5)", "BattleArmor", "AMBUSHER", 6, 6, 50, 5, 577),
]
WIDE_STATE = STATE_COLUMNS  # 27 columns
NARROW_STATE = STATE_COLUMNS[:24]  # older logs: no ARMOR, INTERNAL, BV


def _number(value: float, comma: bool) -> str:
    text = f"{value:.2f}"
    return text.replace(".", ",") if comma else text


class _Unit:
    def __init__(self, entity, player, team, spec, x, y):
        self.entity, self.player, self.team = entity, player, team
        (self.chassis, self.model, self.type, self.role, self.range, self.damage,
         self.full_armor, self.full_internal, self.bv) = spec
        self.x, self.y, self.facing = x, y, 0
        self.armor_p, self.internal_p, self.mp = 1.0, 1.0, 0
        self.destroyed = False


def game_log(seed: int, *, wide: bool = True, crlf: bool = False, decimal_comma: bool = False,
             rounds: int = 4, width: int = 16, height: int = 17, second_game: bool = False) -> str:
    """One synthetic log as text. With `second_game`, the board is logged again (taller) and a
    second game starts at round 1, as in real logs that hold two games.

    Args:
        seed: the game's seed.
        wide: the 27-column unit states (else 24).
        crlf: Windows line ends.
        decimal_comma: numbers with a decimal comma.
        rounds: rounds played.
        width: the board's width.
        height: its height.
        second_game: a second game in the same log.

    Returns:
        The log's text.
    """
    rng = random.Random(seed)
    units = []
    for entity in range(1, rng.randint(4, 7) + 1):
        team = 1 + entity % 2
        x = rng.randrange(0, 3) if team == 1 else rng.randrange(width - 3, width)
        units.append(_Unit(entity, team - 1, team, rng.choice(UNITS), x, rng.randrange(height)))
    log = _SyntheticLog(seed, rng, units, WIDE_STATE if wide else NARROW_STATE, decimal_comma, width)
    log.board(height)
    log.states(0, "DEPLOYMENT")
    log.lines.append("\t".join(MINEFIELD_COLUMNS))
    log.lines.append(f"1\tDEPLOY_MINEFIELDS\tMINEFIELD\t{width // 2}\t{height // 2}")
    game_rounds = [*range(1, rounds + 1)] * (2 if second_game else 1)
    for number, round_ in enumerate(game_rounds):
        if second_game and number == rounds:
            height += 4
            log.board(height)
        for unit in [u for u in units if not u.destroyed]:
            log.move(unit, height)
            log.states(round_, "MOVEMENT")
        log.attacks(round_)
        log.states(round_, "FIRING")
    newline = "\r\n" if crlf else "\n"
    return newline.join(log.lines) + newline


class _SyntheticLog:
    """The lines of one synthetic log, block by block, with the units' random walk."""

    def __init__(self, seed: int, rng: random.Random, units: list, state_columns: list[str], comma: bool, width: int):
        self.seed, self.rng, self.units, self.state_columns, self.comma, self.width = \
            seed, rng, units, state_columns, comma, width
        self.lines = [f"# Log file created at 2025-01-01T00:00:{seed % 60:02d}.000000000"]

    def number(self, value) -> str:
        return _number(value, self.comma)

    def board(self, height: int) -> None:
        rng, width = self.rng, self.width
        self.lines.extend(["BOARD_NAME\tWIDTH\tHEIGHT", f"Synthetic #{self.seed}\t{width}\t{height}"])
        self.lines.append("\t".join(f"COL_{i}" for i in range(width)) + "\t")
        for x in range(width):
            cells = [f"Level: {rng.randint(0, 2)}  Features: " + rng.choice(["", "Light Woods; foliage_elev(2, 0); ",
                                                                             "Water, depth: 1; "])
                     for _ in range(height)]
            self.lines.append(f"ROW_{x}\t" + "\t".join(cells) + "\t")
        self.lines.extend(["THEME\tCITY_TYPE\tMAP_SIZE\tMAP_WIDTH\tMAP_HEIGHT", "\tNONE\t1\t1"])
        self.lines.extend(["TEMPERATURE\tWEATHER\tGRAVITY\tWIND\tATMOSPHERE\tFOG\tLIGHT",
                           f"25\tCLEAR\t{self.number(1)}\tCalm\tStandard\tNone\tDaylight"])

    def states(self, round_: int, phase: str) -> None:
        n = self.number
        self.lines.append("\t".join(self.state_columns))
        for u in self.units:
            if u.destroyed:
                continue
            values = [round_, phase, u.player, u.entity, u.chassis, u.model, u.type, u.role, u.x, u.y,
                      u.facing, n(u.mp), n(0), 0, 0, 0, 0, 0, n(u.armor_p), n(u.internal_p), 1, u.range, u.damage,
                      u.team, n(u.full_armor * u.armor_p), n(u.full_internal * u.internal_p), n(u.bv)]
            self.lines.append("\t".join(str(v) for v in values[:len(self.state_columns)]))

    def move(self, u, height: int) -> None:
        rng, n = self.rng, self.number
        from_x, from_y = u.x, u.y
        steps = rng.randint(0, 5)
        u.x = min(max(u.x + rng.randint(-steps, steps), 0), self.width - 1)
        u.y = min(max(u.y + rng.randint(-steps, steps), 0), height - 1)
        u.facing, u.mp = rng.randrange(6), steps
        hexes = max(abs(u.x - from_x), abs(u.y - from_y))
        move = [u.player, u.entity, u.chassis, u.model, u.facing, from_x, from_y, u.x, u.y, hexes, 0,
                steps, 5, n(steps / 5), n(0), n(u.armor_p), n(u.internal_p), 0, 0, 1, " ".join(["FORWARDS"] * hexes), u.team,
                n(0), int(u.player == 1 and rng.random() < 0.5)]
        self.lines += ["\t".join(MOVE_COLUMNS), "\t".join(str(v) for v in move)]

    def attacks(self, round_: int) -> None:
        """Each unit fires at a random enemy, which loses armour, then structure, and may be destroyed."""
        rng = self.rng
        attackers = [u for u in self.units if not u.destroyed]
        self.lines.append("\t".join(ATTACK_COLUMNS))
        for u in attackers:
            targets = [t for t in attackers if t.team != u.team]
            if not targets:
                continue
            t = rng.choice(targets)
            self.lines.append("\t".join(str(v) for v in [
                round_, u.player, u.entity, u.type, u.role, u.x, u.y, u.facing, t.player, t.entity, t.type,
                t.role, t.x, t.y, t.facing, -1, "NONE", rng.randint(1, 9), -1, 0, 0, 1, 0,
                self.number(rng.randint(4, 11)), 0, -1]))
            t.armor_p = max(0.0, round(t.armor_p - rng.random() * 0.3, 2))
            if t.armor_p == 0:
                t.internal_p = max(0.0, round(t.internal_p - 0.5, 2))
                t.destroyed = t.internal_p == 0


def write_samples(folder: str | Path, count: int = 24, seed: int = 0) -> list[Path]:
    """Writes synthetic logs, mixing 27/24-column states, LF/CRLF and decimal commas.

    Args:
        folder: where (created if missing).
        count: how many.
        seed: the first log's seed.

    Returns:
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        text = game_log(seed * 1000 + i, wide=i % 3 != 2, crlf=i % 2 == 1, decimal_comma=i % 5 == 4)
        path = folder / f"synthetic_{seed:03d}_{i:03d}.tsv"
        path.write_bytes(text.encode())
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic game logs (they only exercise the pipeline).")
    parser.add_argument("folder", nargs="?", default="data/raw")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    written = write_samples(args.folder, args.count, args.seed)
    print(f"wrote {len(written)} synthetic logs to {args.folder}")
