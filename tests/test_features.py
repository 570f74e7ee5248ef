"""Feature set v1: golden games, hand-worked values per feature group, hex distance, reward."""
import numpy as np
import pandas as pd
import pytest
from conftest import GAMELOGS, SHARED, needs_shared_logs
from logtext import STATE27, board, move, text, unit

from caspar.data.features import feature_bounds, feature_names, featurize, hexgrid, load_unit_points, schema
from caspar.data.features.registry import compute_all
from caspar.data.features.situation import Game, Situation
from caspar.data.gamelog import read_log
from caspar.data.samples import game_log

POINTS = load_unit_points()
NAMES = feature_names()
GOLDEN = {
    "humans_27col.csv": "humans_games",
    "vsbot_24col_crlf.csv": "vs_bot_games",
    "vsbot_decimal_comma.csv": "vs_bot_games",
}


@needs_shared_logs()
@pytest.mark.parametrize("golden", sorted(GOLDEN))
def test_golden_games_match(golden):
    expected = pd.read_csv(SHARED / "golden" / golden)
    name = expected["file"].iloc[0]
    log = read_log((GAMELOGS / GOLDEN[golden] / name).read_bytes(), name)
    rows = featurize(log, POINTS)
    ids = np.column_stack([rows.segment, rows.round, rows.player_id, rows.team_id, rows.entity_id, rows.move_index])
    assert ids.tolist() == expected[["segment", "round", "player_id", "team_id", "entity_id", "move_index"]].values.tolist()
    features = expected[[f"f{i}" for i in range(354)]].to_numpy()
    worst = np.abs(rows.features - features).max(axis=0)
    assert not [NAMES[i] for i in np.flatnonzero(worst > 1e-6)]
    assert np.abs(rows.reward - expected["reward"].to_numpy()).max() <= 1e-6


def offset_distance(x1, y1, x2, y2):
    """FEATURES.md §2.3, the offset-coordinate formulation, written out literally."""
    xd = abs(x1 - x2)
    yo = xd // 2 + (1 if x1 % 2 == 0 and x2 % 2 == 1 else 0)
    ymin = y1 - yo
    ymax = ymin + xd
    ym = ymin - y2 if y2 < ymin else y2 - ymax if y2 > ymax else 0
    return xd + ym


def test_hex_distance_known_pairs():
    pairs = {((5, 5), (5, 8)): 3, ((5, 5), (6, 5)): 1, ((5, 5), (6, 6)): 1, ((5, 5), (6, 7)): 2, ((6, 5), (5, 5)): 1,
             ((6, 5), (7, 4)): 1, ((6, 5), (7, 6)): 2, ((0, 0), (3, 0)): 3, ((0, 0), (0, 0)): 0,
             ((-1, -1), (1, 1)): 3}
    for (a, b), expected in pairs.items():
        assert hexgrid.distance(np.array(a[0]), np.array(a[1]), np.array(b[0]), np.array(b[1])) == expected, (a, b)


def test_hex_distance_agrees_with_offset_formula():
    rng = np.random.default_rng(0)
    points = rng.integers(-2, 40, size=(2000, 4))
    cube = hexgrid.distance(points[:, 0], points[:, 1], points[:, 2], points[:, 3])
    assert cube.tolist() == [offset_distance(*p) for p in points.tolist()]


def test_directions_of_the_six_neighbours():
    # MegaMek facing of each neighbour of an even and an odd column hex
    for x, y, neighbours in [(4, 4, [(4, 3), (5, 3), (5, 4), (4, 5), (3, 4), (3, 3)]),
                             (5, 4, [(5, 3), (6, 4), (6, 5), (5, 5), (4, 5), (4, 4)])]:
        for facing, (nx, ny) in enumerate(neighbours):
            ax, ay = hexgrid.point(np.array(x), np.array(y))
            bx, by = hexgrid.point(np.array(nx), np.array(ny))
            direction, defined = hexgrid.direction(ax, ay, bx, by)
            assert defined and direction == facing, (x, y, nx, ny)


def hand_worked_game():
    """Mover (SNIPER, team 1) moves (2,2) -> (5,5); a mate at (6,5), an enemy BRAWLER at (5,8)."""
    mover = dict(role="SNIPER", max_range=18, damage=30, armor=100, internal=50, bv=1000, facing=1)
    mate = dict(role="SCOUT", max_range=10, damage=10, armor=40, internal=20, bv=500, facing=1, chassis="Locust", model="LCT-1V")
    enemy = dict(player=1, team=2, role="BRAWLER", max_range=6, damage=40, armor=120, internal=80, bv=2000,
                 chassis="Hunchback", model="HBK-4G", mp=4)
    lines = board(20, 20) + [
        STATE27, unit(1, 1, 2, 2, **mover), unit(1, 3, 6, 5, **mate), unit(1, 2, 5, 8, armor_p=0.5, **enemy),
        *move(1, (5, 5), frm=(2, 2), facing=1, hexes=3, mp_used=4, max_mp=5, mp_p=0.8),
        STATE27, unit(1, 1, 5, 5, heat=8, **mover), unit(1, 3, 6, 5, **mate), unit(1, 2, 5, 8, armor_p=0.5, **enemy),
        STATE27, unit(2, 1, 5, 5, armor_p=0.5, **mover), unit(2, 3, 6, 5, **mate), unit(2, 2, 5, 8, **enemy),
        *move(2, (5, 9), frm=(5, 8), player=1, team=2, chassis="Hunchback", model="HBK-4G"),
        STATE27, unit(2, 1, 5, 5, **mover), unit(2, 3, 6, 5, **mate), unit(2, 2, 5, 9, **enemy),
        STATE27, unit(3, 1, 5, 5, **mover), unit(3, 3, 6, 5, **mate), unit(3, 2, 5, 9, **enemy),
        *move(3, (6, 6), frm=(6, 5), chassis="Locust", model="LCT-1V"),
        STATE27, unit(3, 1, 5, 5, **mover), unit(3, 3, 6, 6, **mate), unit(3, 2, 5, 9, **enemy),
        STATE27, unit(3, 1, 5, 5, **mover), unit(3, 2, 5, 9, **enemy),  # the mate is destroyed
    ]
    return featurize(read_log(text(lines), "hand.tsv"), POINTS)


def value(rows, name, row=0):
    return rows.features[row, NAMES.index(name)]


def test_hand_worked_scalar_features():
    rows = hand_worked_game()
    expected = {
        "mp_percentage": 0.8, "hexes_moved": 3 / 5, "enemy_in_range": 1 - 3 / 18, "cover_value": 1.0,
        "allies_nearby": 1 / 6, "enemies_nearby": 1 / 8, "team_cohesion": 1 - 1 / 20,
        "position_crowding": 0.7 * 0.5 + 0.3 / 3, "damage_ratio": 30 / 200, "environmental_cover": 0.8,
        "environmental_hazards": 0.3 * 0.8, "formation_separation": 0.5, "formation_alignment": 0.76,
        "covering_units": 0.2, "heat_management": 1 - 8 / 40, "threat_by_sniper": 0.0,
        "target_health": 0.75, "target_within_optimal_range": 0.0, "turns_to_encounter": 1 - (3 / 4) / 5,
        "self_threat_level": 30 / 200 * 0.8, "unit_tmm": 1 / 7, "favorite_target_in_range": 0.0,
        "unit_role": 1 - abs(3 - 0.7 * 18) / (0.3 * 18), "standing_still": 0.0,
    }
    for name, want in expected.items():
        assert value(rows, name) == pytest.approx(max(0.0, min(1.0, want)), abs=1e-12), name


def test_hand_worked_blocks():
    rows = hand_worked_game()
    x = rows.features[0]
    assert x[50:66].tolist() == [1.0 if i == 8 else 0.0 for i in range(16)]  # SNIPER
    assert x[266:270] == pytest.approx([40 / 150 * (1 - 0.7 / 7) * 0.8, 0, 0, 0])
    assert x[270:273] == pytest.approx([10 / 200, 0, 0])
    radar = x[273:354].reshape(9, 9)
    assert radar[4, 4] == 3 and radar[4, 5] == 1 and radar[7, 4] == -1
    assert (radar != 0).sum() == 3
    enemy_map = x[66:166]
    assert np.argmax(enemy_map) == 10 * 4 + 2  # (5, 8) on 20x20 -> cell x 2, y 4
    assert enemy_map[10 * 4 + 3] == pytest.approx(enemy_map[42] / 2)  # one cell away: v / (1 + 1)
    assert np.sum(enemy_map ** 2) == pytest.approx(1.0)


def test_hand_worked_reward():
    rows = hand_worked_game()
    assert rows.move_index.tolist() == [0, 1, 2]
    # Move 0: Φ = the first round-2 snapshot; BV 1500 of 3500, health 0.75 of 1, alive, 3 of 10 hexes
    assert rows.reward[0] == pytest.approx((0.5 * 1500 / 3500 + 0.3 * 0.75 + 0.2) * 0.3)
    # Move 2: round 3 is the last, Φ = the segment's last snapshot, where the mover is gone
    assert rows.reward[2] == pytest.approx((0.5 * 1000 / 3000) * (4 / 8))


def test_excluded_types_and_bots_are_not_rows():
    lines = board(10, 10) + [
        STATE27, unit(1, 1, 2, 2), unit(1, 2, 7, 7, team=2, player=1, type_="BattleArmor"),
        *move(1, (3, 3)), STATE27, unit(1, 1, 3, 3), unit(1, 2, 7, 7, team=2, player=1, type_="BattleArmor"),
        *move(2, (6, 6), player=1, team=2), STATE27, unit(1, 1, 3, 3), unit(1, 2, 6, 6, team=2, player=1, type_="BattleArmor"),
        *move(1, (4, 4), is_bot=1), STATE27, unit(1, 1, 4, 4), unit(1, 2, 6, 6, team=2, player=1, type_="BattleArmor"),
    ]
    log = read_log(text(lines), "types.tsv")
    assert featurize(log, POINTS).move_index.tolist() == [0]
    with_bots = featurize(log, POINTS, include_bots=True)
    assert with_bots.move_index.tolist() == [0, 2] and with_bots.is_bot.tolist() == [False, True]


def strategic_goal_by_counting_the_board(s):
    """F44 as FEATURES.md words it: control counted over every hex of the board."""
    result = []
    for m in range(s.n):
        w, h = int(s.width[m]), int(s.height[m])
        gx, gy = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")

        def control(points):
            on = [(x, y) for x, y in points if 0 <= x < w and 0 <= y < h]
            if not on:
                return np.zeros(gx.shape, bool)
            return np.any([hexgrid.distance(gx, gy, x, y) <= 7 for x, y in on], axis=0)

        mates = list(zip(s.u_x[m][s.mates[m]], s.u_y[m][s.mates[m]]))
        enemy = control(list(zip(s.u_x[m][s.enemies[m]], s.u_y[m][s.enemies[m]])))
        before = control(mates + [(s.p0x[m], s.p0y[m])])
        after = control(mates + [(s.px[m], s.py[m])])
        n = w * h
        gained = (after.sum() - before.sum()) / n
        disputed = ((before & enemy).sum() - (after & enemy).sum()) / n
        clamp = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
        result.append(clamp(0.7 * clamp(gained + 0.5) + 0.3 * clamp(disputed + 0.5)))
    return np.array(result)


def test_strategic_goal_matches_brute_force_board_count():
    for seed in range(6):
        log = read_log(game_log(seed).encode(), "s.tsv")
        game = Game(log, POINTS)
        moves = np.arange(log.moves.num_rows)
        me = game.row_of(log.moves["next_block"].to_numpy(), log.moves["ENTITY_ID"].to_numpy().astype(np.int64))
        keep = me >= 0
        s = Situation(game, moves[keep], me[keep])
        fast = compute_all(s)[:, NAMES.index("strategic_goal")]
        assert fast == pytest.approx(strategic_goal_by_counting_the_board(s), abs=1e-12)


def test_every_value_within_its_bounds_on_synthetic_games():
    bounds = feature_bounds()
    for seed in range(10):
        rows = featurize(read_log(game_log(seed, wide=seed % 2 == 0).encode(), "s.tsv"), POINTS, include_bots=True)
        assert np.isfinite(rows.features).all() and np.isfinite(rows.reward).all()
        assert (rows.features >= bounds[:, 0]).all() and (rows.features <= bounds[:, 1]).all()
        assert ((rows.reward >= 0) & (rows.reward <= 1)).all()


def test_schema_names_widths_and_version():
    s = schema()
    assert s["width"] == 354 == len(NAMES) == sum(f["width"] for f in s["features"])
    assert NAMES[0] == "mp_percentage" and NAMES[49] == "self_threat_level"
    assert NAMES[50] == "unit_role_0" and NAMES[66] == "enemy_threat_heatmap_0" and NAMES[313] == "radar_4_4"
    assert s["version"].startswith("v1-") and s["version"] == schema()["version"]


def test_adding_a_feature_changes_the_schema(monkeypatch):
    from caspar.data.features import registry

    before = schema()["version"]
    monkeypatch.setattr(registry, "REGISTRY", list(registry.REGISTRY))
    registry.feature("always_one")(lambda s: np.ones(s.n))
    after = registry.schema()
    assert after["width"] == 355 and after["version"] != before
    rows = featurize(read_log(game_log(1).encode(), "s.tsv"), POINTS)
    assert rows.features.shape[1] == 355 and (rows.features[:, -1] == 1).all()


def test_unit_points_lookup_order():
    assert POINTS.by_type["BipedMek"] == (176, 99) and POINTS.by_type["SupportTank"] == (28.5, 15)
    chassis, model = next(iter(POINTS.exact))
    assert POINTS.lookup(chassis, model, "BipedMek") == POINTS.exact[(chassis, model)]
    assert POINTS.lookup("No Such Unit", "X", "Tank") == (114, 25)
    assert POINTS.lookup("No Such Unit", "X", "Spaceship") == (0, 0)


def test_mekfile_replaces_exact_lookup(tmp_path):
    mekfile = tmp_path / "units.tsv"
    mekfile.write_text("Chassis\tModel\tBV\tTotalArmor\tTotalInternal\tECM\tmaxRange\ttotalDamage\tunitRole\n"
                       "Atlas\tAS7-D\t1897\t304\t152\t0\t18\t60\tJUGGERNAUT\n")
    points = load_unit_points(mekfile=mekfile)
    assert points.lookup("Atlas", "AS7-D", "BipedMek") == (304, 152)
    assert points.lookup("Locust", "LCT-1V", "BipedMek") == (176, 99)  # not in the mekfile: TYPE median
