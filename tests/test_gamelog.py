"""The log reader on small logs written here, one per quirk of real files."""
import math

import numpy as np
from logtext import ATTACK, MINEFIELD, MOVE, STATE24, STATE27, board, move, text, unit

from caspar.data.gamelog import parse_hex, read_log
from caspar.data.samples import game_log


def basic_game(newline="\n", wide=True):
    header = STATE27 if wide else STATE24
    return text(board(10, 8) + [
        header, unit(1, 1, 2, 3, wide=wide), unit(1, 2, 7, 3, player=1, team=2, wide=wide),
        *move(1, (3, 3), frm=(2, 3)),
        header, unit(1, 1, 3, 3, wide=wide), unit(1, 2, 7, 3, player=1, team=2, wide=wide),
    ], newline)


def column(table, name):
    return table[name].to_pylist()


def test_reads_blocks_into_tables():
    log = read_log(basic_game(), "g.tsv")
    assert log.problems == []
    assert log.states.num_rows == 4 and log.moves.num_rows == 1
    assert column(log.states, "block") == [0, 0, 1, 1]
    assert column(log.moves, "next_block") == [1]
    assert column(log.moves, "TO_X") == [3.0]
    assert (log.boards[0].width, log.boards[0].height) == (10, 8)
    assert column(log.states, "line")[0] == 15  # 1-based source lines


def test_crlf_and_lf_read_the_same():
    lf, crlf = read_log(basic_game("\n"), "a"), read_log(basic_game("\r\n"), "a")
    assert lf.states.equals(crlf.states) and lf.moves.equals(crlf.moves)
    assert column(crlf.states, "CHASSIS")[0] == "Atlas"


def test_utf8_names_survive():
    data = text(board(5, 5) + [STATE27, unit(1, 1, 1, 1, chassis="Kōjin Mech", model="KJ-1 ü")])
    log = read_log(data, "utf8.tsv")
    assert column(log.states, "CHASSIS") == ["Kōjin Mech"] and column(log.states, "MODEL") == ["KJ-1 ü"]


def test_bytes_that_are_not_utf8_cost_at_most_their_line():
    data = text(board(5, 5) + [STATE27, unit(1, 1, 1, 1, chassis="Caf\x00", model="A"), unit(1, 1, 2, 1, model="B")])
    data = data.encode() if isinstance(data, str) else data
    data = data.replace(b"Caf\x00", b"Caf\xe9")  # a Windows-1252 e-acute
    log = read_log(data, "cp1252.tsv")
    assert column(log.states, "CHASSIS")[0] == "Caf\ufffd" and column(log.states, "MODEL") == ["A", "B"]
    [problem] = log.problems
    assert "not UTF-8" in problem.reason and problem.line == data.split(b"\n").index(next(
        line for line in data.split(b"\n") if b"Caf\xe9" in line)) + 1


def test_24_column_states_have_no_points():
    log = read_log(basic_game(wide=False), "narrow.tsv")
    assert log.problems == [] and not log.has_armor_columns
    assert all(v is None for v in column(log.states, "BV"))
    assert read_log(basic_game(), "wide.tsv").has_armor_columns


def test_decimal_commas():
    data = basic_game().decode().replace("1.00", "1,00").replace("0.60", "0,60").encode()
    log = read_log(data, "comma.tsv")
    assert log.problems == []
    assert column(log.moves, "MP_P") == [0.6]
    assert column(log.states, "ARMOR_P") == [1.0] * 4


def test_board_repeated_mid_game_with_other_size():
    lines = board(10, 8) + [STATE27, unit(1, 1, 2, 3), *move(1, (3, 3)), STATE27, unit(1, 1, 3, 3)]
    lines += board(20, 30, "Board #1") + [STATE27, unit(1, 1, 15, 25), *move(1, (16, 25)), STATE27, unit(1, 1, 16, 25)]
    log = read_log(text(lines), "boards.tsv")
    assert [(b.width, b.height) for b in log.boards] == [(10, 8), (20, 30)]
    assert column(log.moves, "board") == [0, 1]
    assert column(log.blocks, "board") == [0, 0, 1, 1]


def test_attack_rows_without_their_own_header():
    attack = "\t".join(str(v) for v in [1, 0, 1, "BipedMek", "SNIPER", 2, 3, 0, 1, 2, "BipedMek", "BRAWLER",
                                        7, 3, 3, -1, "NONE", 4, 17, 0, 0, 1, 0, "11.00", 0, -1])
    lines = board(10, 8) + [ATTACK, attack, STATE27, unit(1, 1, 2, 3), attack, attack,
                            MINEFIELD, "1\tFIRING\tMINEFIELD\t4\t4", attack]
    log = read_log(text(lines), "attacks.tsv")
    assert log.problems == []
    assert log.attacks.num_rows == 4 and log.states.num_rows == 1 and log.minefields.num_rows == 1
    assert column(log.attacks, "TO_HIT") == [11.0] * 4


def test_round_minus_one_and_trailing_tabs():
    lines = board(10, 8) + [STATE27 + "\t", unit(-1, 1, 2, 3, phase="DEPLOY_MINEFIELDS") + "\t",
                            MINEFIELD + "\t", "-1\tDEPLOY_MINEFIELDS\tMINEFIELD\t4\t4"]
    log = read_log(text(lines), "minus1.tsv")
    assert log.problems == []
    assert column(log.states, "ROUND") == [-1.0]
    assert column(log.minefields, "ROUND") == [-1.0]


def test_move_header_with_fewer_columns():
    columns = MOVE.split("\t")[:21]  # older MegaMek: no TEAM_ID, CHANCE_OF_FAILURE, IS_BOT
    lines = board(10, 8) + [STATE27, unit(1, 1, 2, 3), *move(1, (3, 3), columns=columns),
                            STATE27, unit(1, 1, 3, 3)]
    log = read_log(text(lines), "old.tsv")
    assert log.problems == []
    assert column(log.moves, "IS_BOT") == [None] and column(log.moves, "TEAM_ID") == [None]


def test_bad_lines_are_reported_and_skipped():
    good = basic_game().decode().split("\n")
    bad_number = unit(1, 3, "x", 3)  # X is not a number
    short = "1\tMOVEMENT\t0\t4"  # too few fields
    lines = good[:15] + [bad_number, short] + good[15:]
    log = read_log("\n".join(lines).encode(), "bad.tsv")
    assert [(p.line, "X" in p.reason or "fields" in p.reason) for p in log.problems] == [(16, True), (17, True)]
    assert str(log.problems[0]).startswith("bad.tsv:16: ")
    assert log.states.num_rows == 4 and log.moves.num_rows == 1  # everything else kept


def test_unknown_header_is_reported():
    lines = board(5, 5) + ["SOMETHING\tELSE", "1\t2", STATE27, unit(1, 1, 1, 1)]
    log = read_log(text(lines), "odd.tsv")
    assert [p.line for p in log.problems] == [9, 10]
    assert log.states.num_rows == 1


def test_map_settings_and_planetary_conditions():
    lines = board(5, 5) + ["THEME\tCITY_TYPE\tMAP_SIZE\tMAP_WIDTH\tMAP_HEIGHT", "\tTOWN\t1\t1",
                           "TEMPERATURE\tWEATHER\tGRAVITY\tWIND\tATMOSPHERE\tFOG\tLIGHT",
                           "25\tCLEAR\t1.0\tCalm\tStandard\tNone\tDaylight", STATE27, unit(1, 1, 1, 1)]
    log = read_log(text(lines), "m.tsv")
    assert log.problems == []
    assert log.map_settings["CITY_TYPE"] == "TOWN" and log.map_settings["THEME"] == ""
    assert log.planetary["TEMPERATURE"] == "25" and log.planetary["LIGHT"] == "Daylight"


def test_nan_and_negative_zero():
    row = unit(1, 1, 1, 1, type_="GunEmplacement").replace("\t1.00\t1\t18", "\tNaN\t1\t18")
    row = row.replace("\t0.00\t0.00\t", "\t-0.00\t0.00\t", 1)
    log = read_log(text(board(5, 5) + [STATE27, row]), "nan.tsv")
    assert log.problems == []
    internal = column(log.states, "INTERNAL_P")[0]
    assert internal is None or math.isnan(internal)
    assert column(log.states, "MP") == [0.0]


def test_a_role_megamek_does_not_write_is_reported_and_read_as_unknown():
    """MegaMek writes its UnitRole names in upper case; another spelling is one problem naming the
    file and line, and the role reads as unknown (the features' one-hot is all zeros, as in Java)."""
    from caspar.data.features.situation import ROLES, UNKNOWN_ROLE, _role_codes

    log = read_log(text(board(5, 5) + [STATE27, unit(1, 1, 1, 1, role="brawler"), unit(1, 2, 3, 3, role="SNIPER")]),
                   "roles.tsv")
    line = len(board(5, 5)) + 2  # the board's lines, the header, then the row
    assert [str(p) for p in log.problems] == [
        f"roles.tsv:{line}: ROLE 'brawler' is not a role MegaMek writes (its UnitRole names, upper case); read as an unknown role"]
    assert list(_role_codes(np.array(column(log.states, "ROLE")))) == [UNKNOWN_ROLE, ROLES.index("SNIPER")]


def test_hex_terrain_parsing():
    level, terrain = parse_hex("Level: 1  Features: Heavy Woods; foliage_elev(2, 0); Water, depth: 3; road(1, 0); ")
    assert level == 1 and terrain == {"woods": 2, "foliage_elev": 2, "water": 3, "road": 1}
    log = read_log(text(board(3, 2)), "b.tsv")
    hexes = log.boards[0].hexes()
    assert len(hexes) == 6 and set(hexes["x"]) == {0, 1, 2} and set(hexes["y"]) == {0, 1}


def test_synthetic_logs_round_trip():
    for seed, options in enumerate([{}, {"wide": False}, {"crlf": True}, {"decimal_comma": True}]):
        data = game_log(seed, **options)
        log = read_log(data.encode(), "synthetic.tsv")
        assert log.problems == []
        lines = data.replace("\r\n", "\n").split("\n")
        assert log.moves.num_rows == sum(1 for line in lines if line.startswith("PLAYER_ID"))
        assert log.minefields.num_rows == 1 and log.attacks.num_rows > 0
        assert log.has_armor_columns == options.get("wide", True)
        first_move = lines[lines.index(next(line for line in lines if line.startswith("PLAYER_ID"))) + 1]
        to_x = float(first_move.split("\t")[7])
        assert log.moves["TO_X"][0].as_py() == to_x
        assert np.all(log.states["X"].to_numpy() >= 0)


def test_the_writer_takes_a_folder_of_logs_and_names_a_missing_one(tmp_path):
    """`python -m caspar.data.gamelog.writer FOLDER --output DIR`, as the README shows it."""
    import subprocess
    import sys

    from caspar.data.samples import write_samples

    write_samples(tmp_path / "logs" / "nested", count=2)
    done = subprocess.run([sys.executable, "-m", "caspar.data.gamelog.writer", str(tmp_path / "logs"), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0 and "wrote 2 games" in done.stdout, done.stderr
    assert len(list((tmp_path / "out").glob("*.tsv"))) == 2
    missing = subprocess.run([sys.executable, "-m", "caspar.data.gamelog.writer", str(tmp_path / "none.tsv"), "--output",
                              str(tmp_path / "out2")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "none.tsv" in missing.stderr
