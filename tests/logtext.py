"""Small hand-written game logs for tests: build a log line by line, with any quirk."""
from caspar.data.gamelog.log import ATTACK_COLUMNS, MINEFIELD_COLUMNS, MOVE_COLUMNS, STATE_COLUMNS

STATE27 = "\t".join(STATE_COLUMNS)
STATE24 = "\t".join(STATE_COLUMNS[:24])
MOVE = "\t".join(MOVE_COLUMNS)
ATTACK = "\t".join(ATTACK_COLUMNS)
MINEFIELD = "\t".join(MINEFIELD_COLUMNS)


def board(width, height, name="Board #0"):
    rows = ["BOARD_NAME\tWIDTH\tHEIGHT", f"{name}\t{width}\t{height}",
            "\t".join(f"COL_{i}" for i in range(width)) + "\t"]
    rows += [f"ROW_{x}\t" + "\t".join("Level: 0  Features: " for _ in range(height)) + "\t" for x in range(width)]
    return rows


def unit(round_, entity, x, y, *, player=0, team=1, chassis="Atlas", model="AS7-D", type_="BipedMek",
         role="JUGGERNAUT", facing=0, mp=0.0, heat=0.0, off_board=0, armor_p=1.0, internal_p=1.0,
         max_range=18, damage=60, armor=300.0, internal=150.0, bv=2000.0, wide=True, phase="MOVEMENT"):
    values = [round_, phase, player, entity, chassis, model, type_, role, x, y, facing, f"{mp:.2f}",
              f"{heat:.2f}", 0, 0, off_board, 0, 0, f"{armor_p:.2f}", f"{internal_p:.2f}", 1, max_range,
              damage, team]
    if wide:
        values += [f"{armor:.2f}", f"{internal:.2f}", f"{bv:.2f}"]
    return "\t".join(str(v) for v in values)


def move(entity, to, *, frm=(0, 0), player=0, team=1, chassis="Atlas", model="AS7-D", facing=0,
         hexes=3, distance=0, mp_used=3, max_mp=5, mp_p=0.6, heat_p=0.0, armor_p=1.0, internal_p=1.0,
         jumping=0, prone=0, is_bot=0, columns=MOVE_COLUMNS):
    values = dict(zip(MOVE_COLUMNS, [
        player, entity, chassis, model, facing, frm[0], frm[1], to[0], to[1], hexes, distance, mp_used,
        max_mp, f"{mp_p:.2f}", f"{heat_p:.2f}", f"{armor_p:.2f}", f"{internal_p:.2f}", jumping, prone, 1,
        "FORWARDS", team, "0.00", is_bot]))
    return ["\t".join(columns), "\t".join(str(values[c]) for c in columns)]


def text(lines, newline="\n"):
    return (newline.join(lines) + newline).encode()
