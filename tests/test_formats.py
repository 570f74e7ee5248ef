"""The log layouts MegaMek writes today (../shared/LOGFORMAT.md): each reads like the corpus layout."""
import json

import numpy as np
import pytest
from conftest import GAMELOGS, needs_shared_logs

from caspar.config import PrepareConfig
from caspar.data import dataset
from caspar.data.features import feature_names, featurize, load_unit_points
from caspar.data.gamelog import read_game, read_log
from caspar.data.gamelog.writer import FORMAT_DEPENDENT_FEATURES, LAYOUTS, MOVE, STATE, rewrite
from caspar.data.samples import game_log

POINTS = load_unit_points()
SAME = np.array([name not in FORMAT_DEPENDENT_FEATURES for name in feature_names()])


def assert_same_rows(original: bytes, files: dict[str, bytes]):
    expected = featurize(read_log(original, "original"), POINTS)
    log = read_game(files)
    actual = featurize(log, POINTS)
    assert len(expected) == len(actual) > 0
    assert np.array_equal(expected.entity_id, actual.entity_id) and np.array_equal(expected.round, actual.round)
    np.testing.assert_allclose(actual.features[:, SAME], expected.features[:, SAME], atol=1e-6, rtol=0)
    np.testing.assert_allclose(actual.reward, expected.reward, atol=1e-6, rtol=0)
    return log


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("crlf", [False, True])
def test_a_game_reads_the_same_in_every_layout(layout, crlf):
    original = game_log(5, second_game=True, crlf=crlf).encode()  # the board is logged again mid-game
    files = rewrite(original, layout, crlf=crlf)
    assert len(files) == (4 if layout == "split" else 1)
    log = assert_same_rows(original, files)
    assert log.format == layout and log.problems == []
    assert [(b.width, b.height) for b in log.boards] == [(16, 17), (16, 21)]


def test_a_versioned_file_is_what_the_spec_describes():
    files = rewrite(game_log(2).encode(), "versioned", crlf=True)
    (name, data), = files.items()
    assert name.startswith("game_actions_") and name.endswith(".tsv")
    text = data.decode()
    assert text.startswith("# Log file created at ")
    lines = text.replace("\r\n", "\n").split("\n")
    headers = [line for line in lines if line.startswith("VERSION\t")]
    assert "VERSION\t" + "\t".join(STATE) in headers and "VERSION\t" + "\t".join(MOVE) in headers
    assert any(line.startswith("UnitState.31052025\t") for line in lines)
    blocks = text.split("\r\n")
    assert "\n" in blocks[1] and len(blocks) > 10  # LF inside a block, CRLF after it
    board = read_log(data, name).boards[0]
    assert not board.rows_are_columns and len(board.rows) == board.height  # ROW_y holds board row y


def test_the_board_is_transposed_and_reads_back_the_same():
    original = game_log(4, width=12, height=12).encode()  # square: the format decides, not the counts
    old, new = read_log(original, "a").boards[0], read_log(next(iter(rewrite(original, "versioned").values())), "b").boards[0]
    key = ["x", "y"]
    before, after = old.hexes().sort_values(key).reset_index(drop=True), new.hexes().sort_values(key).reset_index(drop=True)
    assert before.equals(after) and len(before) == 144


def test_versioned_rows_without_their_own_header_are_placed_by_class():
    data = next(iter(rewrite(game_log(6).encode(), "versioned").values())).decode()
    move_header = "VERSION\t" + "\t".join(MOVE)
    first = data.index(move_header) + len(move_header)
    data = data[:first] + data[first:].replace(move_header + "\n", "")  # only the first move keeps its header
    complete = read_log(next(iter(rewrite(game_log(6).encode(), "versioned").values())), "a")
    log = read_log(data.encode(), "b")
    assert log.problems == []
    assert log.moves.num_rows == complete.moves.num_rows
    assert log.moves["next_block"].to_pylist() == complete.moves["next_block"].to_pylist()


def test_extra_columns_are_ignored_and_a_missing_one_is_one_problem():
    data = next(iter(rewrite(game_log(7).encode(), "2025-05").values())).decode()
    state_header = "\t".join(STATE)
    extra = data.replace(state_header, state_header + "\tNEW_COLUMN")
    extra = "\n".join(line + "\t7" if line[:1].isdigit() and line.count("\t") == len(STATE) - 1 else line
                      for line in extra.split("\n"))
    log = read_log(extra.encode(), "extra.tsv")
    assert log.problems == [] and log.states.num_rows == read_log(data.encode(), "a").states.num_rows
    missing = read_log(data.replace("\tTEAM_ID\tROUND\t", "\tTEAM\tROUND\t").encode(), "missing.tsv")
    lacking = [p for p in missing.problems if "lacks" in p.reason]
    assert len(lacking) == 1 and "TEAM_ID" in lacking[0].reason and lacking[0].line > 1
    assert missing.states.num_rows == 0 and missing.moves.num_rows > 0


def test_per_arc_armour_and_ecm_are_read_where_the_log_has_them():
    data = next(iter(rewrite(game_log(8).encode(), "versioned").values())).decode()
    state_columns = ["VERSION", *STATE]
    move_columns = ["VERSION", *MOVE]

    def edit(line, columns, **values):
        fields = line.split("\t")
        for column, value in values.items():
            fields[columns.index(column)] = value
        return "\t".join(fields)

    lines = []
    for line in data.split("\n"):
        if line.startswith("UnitState."):
            line = edit(line, state_columns, HAS_ECM="1", ARMOR_BACK_P="0.25")
        elif line.startswith("UnitAction."):
            line = edit(line, move_columns, ARMOR_FRONT_P="0.50", ARMOR_BACK_P="", HAS_ECM="1")
        lines.append(line)
    rows = featurize(read_log("\n".join(lines).encode(), "ecm.tsv"), POINTS)
    names = feature_names()
    value = {name: rows.features[:, names.index(name)] for name in names[:50]}
    assert np.all(value["unit_health_front"] == 0.5)  # the move row's
    assert np.all(value["unit_health_back"] == 0.25)  # not in the move row: the mover's state row's
    assert np.all(value["ecm_coverage"] > 0) and np.all(value["ecm_coverage"] <= 1)
    assert np.any(value["enemy_ecm_coverage"] < 1)  # every unit carries ECM: some enemy is within 6 hexes


def test_a_split_game_with_several_boards_but_one_game_says_which_board_it_uses():
    files = rewrite(game_log(9).encode(), "split")
    board_file = next(name for name in files if "_board_" in name)
    files[board_file] += files[board_file].split(b"\n", 1)[1]  # the board logged twice, the rounds never fall
    log = read_game(files)
    assert any("2 boards for 1 games" in p.reason for p in log.problems)
    assert set(log.blocks["board"].to_pylist()) == {1}


def test_prepare_reads_every_layout_and_counts_formats(ray_local, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for seed in range(12):
        original = game_log(seed).encode()
        layout = [None, *LAYOUTS][seed % 4]
        files = {f"old_{seed}.tsv": original} if layout is None else rewrite(original, layout, timestamp=f"20250601_0000{seed:02d}")
        for name, content in files.items():
            (raw / name).write_bytes(content)
    (raw / "game_actions_states_20250601_999999.tsv").write_bytes(b"# STATES log file created at x\n")  # no other parts
    summary = dataset.prepare(PrepareConfig(input=str(raw), output=str(tmp_path / "out"), seed=2))
    assert summary.formats == {"2025-03": 3, "2025-05": 3, "versioned": 3, "split": 3}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    by_file = {entry["file"]: entry for entry in manifest["files"]}
    split = by_file["game_actions_20250601_000003"]
    assert split["format"] == "split" and len(split["parts"]) == 4 and split["rows"] > 0
    lonely = by_file["game_actions_states_20250601_999999.tsv"]
    assert "lacks its board and actions and attacks file" in lonely["problems"][0]["reason"]
    expected = sum(len(featurize(read_log(game_log(seed).encode(), "x"), POINTS)) for seed in range(12))
    assert sum(summary.rows.values()) == expected


@needs_shared_logs()
@pytest.mark.parametrize("layout", LAYOUTS)
def test_corpus_games_read_the_same_in_every_layout(layout):
    """Games with each quirk of the corpus: a decimal comma, 24-column states, CRLF, a second board."""
    paths = sorted(GAMELOGS.glob("*/*.tsv"))
    chosen = {}
    for path in paths:
        data = path.read_bytes()
        log = read_log(data, path.name)
        for quirk, present in (("comma", b"0,00" in data), ("narrow", not log.has_armor_columns),
                               ("crlf", b"\r\n" in data), ("two boards", len(log.boards) > 1)):
            if present and quirk not in chosen:
                chosen[quirk] = data
    assert len(chosen) == 4
    for data in chosen.values():
        assert_same_rows(data, rewrite(data, layout, crlf=True))
