"""Scalar features F0-F49 (FEATURES.md §4), registered in index order.

Notation: `s` is a Situation; [M] arrays per move, [M, K] arrays per move and snapshot unit;
`s.enemies`, `s.mates`, `s.own` are the sets E, F, O; `s.d` the hex distance from P.
"""
from __future__ import annotations

import numpy as np

from caspar.data.features import hexgrid
from caspar.data.features.registry import feature
from caspar.data.features.situation import ROLE, Situation, clamp01


def _count(mask) -> np.ndarray:
    return mask.sum(axis=1).astype(np.float64)


def _masked_max(values, mask, empty=0.0) -> np.ndarray:
    """Row-wise max over the masked entries; `empty` where nothing is selected."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], empty)
    return np.where(mask.any(axis=1), np.where(mask, values, -np.inf).max(axis=1), empty)


def _valid_fraction(v) -> np.ndarray:
    return np.isfinite(v) & (v >= 0) & (v <= 1)


@feature("mp_percentage", description="Share of its movement points the unit used (M.MP_P).")
def mp_percentage(s: Situation):
    return clamp01(s.mp_p)


@feature("heat_percentage", description="Heat as a share of the unit's heat capacity after the move (M.HEAT_P).")
def heat_percentage(s: Situation):
    return clamp01(s.heat_p)


@feature("armor_percentage", description="Remaining armour fraction of the mover (0 when the log's value is invalid).")
def armor_percentage(s: Situation):
    return np.where(_valid_fraction(s.armor_p), s.armor_p, 0.0)


@feature("internal_percentage", description="Remaining internal-structure fraction of the mover (1 when invalid).")
def internal_percentage(s: Situation):
    return np.where(_valid_fraction(s.internal_p), s.internal_p, 1.0)


@feature("jumping", description="1 if the move is a jump.")
def jumping(s: Situation):
    return s.jumping


@feature("distance_traveled", description="Distance travelled as a share of the unit's maximum MP.")
def distance_traveled(s: Situation):
    return np.where(s.max_mp == 0, 0.0, clamp01(s.distance / np.where(s.max_mp == 0, 1, s.max_mp)))


@feature("hexes_moved", description="Hexes moved as a share of the unit's maximum MP.")
def hexes_moved(s: Situation):
    return np.where(s.max_mp == 0, 0.0, clamp01(s.hexes_moved / np.where(s.max_mp == 0, 1, s.max_mp)))


@feature("is_facing_enemy", description="How closely the final facing points at the threatening enemies (1: straight at them).")
def is_facing_enemy(s: Situation):
    threats = s.threatening
    count = np.maximum(_count(threats), 1)
    tx, ty = hexgrid.point(s.u_x, s.u_y)
    mean_x = np.where(threats, tx, 0).sum(axis=1) / count
    mean_y = np.where(threats, ty, 0).sum(axis=1) / count
    px, py = hexgrid.point(s.px, s.py)
    ideal, defined = hexgrid.direction(px, py, mean_x, mean_y)
    ideal = np.where(threats.any(axis=1) & defined, ideal, s.facing)
    return 1.0 - hexgrid.facing_difference(s.facing, ideal) / 3.0


@feature("enemy_in_range", description="How far inside the mover's weapon range the closest enemy is.")
def enemy_in_range(s: Situation):
    ok = (s.range > 0) & s.enemies.any(axis=1)
    return np.where(ok, clamp01(1.0 - s.d_c / np.where(s.range > 0, s.range, 1)), 0.0)


@feature("cover_value", bounds=(0.21, 1.0), description="Cover from terrain and posture against the closest enemy, by distance band.")
def cover_value(s: Situation):
    base = np.select([s.d_c > 20, s.d_c > 12], [0.3, 0.6], 0.9)
    base = base * np.where(s.has_role("SNIPER", "MISSILE_BOAT", "SCOUT", "STRIKER"), 1.2, 1.0)
    base = base * np.where(s.jumping, 0.7, 1.0) * np.where(s.prone, 1.2, 1.0)
    return clamp01(base)


@feature("allies_nearby", description="Friendly units within 8 hexes, divided by 6 (at most 1).")
def allies_nearby(s: Situation):
    return np.minimum(_count(s.mates & (s.d <= 8)) / 6.0, 1.0)


@feature("enemies_nearby", description="Enemy units within 10 hexes, divided by 8 (at most 1).")
def enemies_nearby(s: Situation):
    return clamp01(_count(s.enemies & (s.d <= 10)) / 8.0)


@feature("team_cohesion", description="Closeness to the centroid of the friendly units (1: on it, or no friends).")
def team_cohesion(s: Situation):
    return np.where(s.mates.any(axis=1), clamp01(1.0 - s.mates_centroid_distance / 20.0), 1.0)


@feature("unit_health_average", description="Average of the mover's armour and internal-structure fractions (h_M).")
def unit_health_average(s: Situation):
    return s.h_m


def _arc_health(arc: str):
    def arc_health(s: Situation):
        return s.arc_health[arc]
    return arc_health


# Per-arc armour (ARMOR_FRONT_P, ...) is in logs from May 2025 on; none of the corpus has it.
for arc in ("front", "right", "left", "back"):
    feature(f"unit_health_{arc}", description=f"Armour fraction of the {arc} arc (the move row's, else the mover's "
                                              "state row's); the average health where the log has none.")(_arc_health(arc))


@feature("position_crowding", description="Crowding by enemies within 8 and friends within 4 hexes.")
def position_crowding(s: Situation):
    a = _count(s.enemies & (s.d < 8)) / 2.0
    b = _count(s.mates & (s.d < 4)) / 3.0
    return clamp01(0.7 * a + 0.3 * b)


@feature("damage_ratio", description="Damage the mover can deal relative to the hit points of enemies in its range.")
def damage_ratio(s: Situation):
    reachable = s.enemies & (s.d <= s.range[:, None]) & (s.u_hp > 0)
    ratio = s.damage[:, None] / np.where(s.u_hp > 0, s.u_hp, 1.0)
    return clamp01(np.maximum(0.0, _masked_max(ratio, reachable)))


# HAS_ECM is not in any corpus log: no friendly ECM (0) and no enemy ECM (1 / (0 + 1)).
@feature("ecm_coverage", description="Friendly ECM covering the destination (HAS_ECM; 0 in logs without it).")
def ecm_coverage(s: Situation):
    friendly_ecm = _count(s.mates & s.u_has_ecm & (s.d <= 6))
    return np.where(s.has_ecm, 1.0 / (friendly_ecm + 1), 0.0)


@feature("enemy_ecm_coverage", bounds=(0.0, 1.0), description="Enemy ECM within 6 hexes (1 in logs without HAS_ECM).")
def enemy_ecm_coverage(s: Situation):
    return 1.0 / (_count(s.enemies & s.u_has_ecm & (s.d <= 6)) + 1)


@feature("environmental_cover", bounds=(0.2, 0.8), description="Cover value by distance band to the closest enemy.")
def environmental_cover(s: Situation):
    return np.select([s.d_c < 7, s.d_c < 12, s.d_c < 24], [0.8, 0.6, 0.4], 0.2)


@feature("environmental_hazards", description="Risk of the move from MP spent beyond the hexes moved and jumping.")
def environmental_hazards(s: Situation):
    z = np.where(s.mp_used > s.hexes_moved, 0.3 * s.mp_p, 0.0)
    return clamp01(np.where(s.jumping, z / 2.0, z))


# w(mover role, enemy role); enemies of roles without a column have no weight.
FAVORITE_TARGET_ROLES = ["MISSILE_BOAT", "SNIPER", "STRIKER", "SCOUT", "JUGGERNAUT"]
FAVORITE_TARGET_WEIGHTS = {
    "SNIPER": [0.9, 0.9, 0.5, 0.5, 0.7],
    "JUGGERNAUT": [0.9, 0.9, 0.5, 0.3, 1.0],
    "STRIKER": [0.9, 0.9, 0.6, 0.5, 0.4],
    "MISSILE_BOAT": [0.9, 0.9, 0.7, 0.6, 0.3],
    None: [0.9, 0.9, 0.5, 0.3, 0.7],  # any other mover role
}


def _favorite_target_table() -> np.ndarray:
    """[mover role code + 1, enemy role code + 1] -> weight (NaN = no weight); code -1 = unknown."""
    table = np.full((len(ROLE) + 1, len(ROLE) + 1), np.nan)
    for mover in range(-1, len(ROLE)):
        name = next((n for n, c in ROLE.items() if c == mover), None)
        weights = FAVORITE_TARGET_WEIGHTS.get(name, FAVORITE_TARGET_WEIGHTS[None])
        for enemy_role, w in zip(FAVORITE_TARGET_ROLES, weights):
            table[mover + 1, ROLE[enemy_role] + 1] = w
    return table


FAVORITE_TARGET_TABLE = _favorite_target_table()


@feature("favorite_target_in_range", description="Best-weighted enemy (by the mover's role) within weapon range.")
def favorite_target_in_range(s: Situation):
    weight = FAVORITE_TARGET_TABLE[s.role[:, None] + 1, s.u_role + 1]
    range_ = np.where(s.range > 0, s.range, 1.0)[:, None]
    candidates = s.enemies & np.isfinite(weight) & (s.d <= s.range[:, None])
    score = np.maximum(0.0, _masked_max(np.nan_to_num(weight) * (1.0 - s.d / range_), candidates))
    return np.where(s.range > 0, clamp01(score), 0.0)


@feature("flanking_position", description="How well the destination flanks nearby enemies relative to their facing.")
def flanking_position(s: Situation):
    near = s.enemies & (s.d > 0) & (s.d <= 12)
    ux, uy = hexgrid.point(s.u_x, s.u_y)
    px, py = hexgrid.point(s.px, s.py)
    toward_mover, _ = hexgrid.direction(ux, uy, px[:, None], py[:, None])
    delta = hexgrid.facing_difference(toward_mover, s.u_facing)
    zone = np.select([delta <= 1, delta == 2], [0.2, 0.75], 1.0)
    score = zone * clamp01(1.0 - s.d / 12.0)
    return np.maximum(0.0, _masked_max(score, near))


def _pattern_score(d: np.ndarray) -> np.ndarray:
    return np.select([d < 1, d < 3, d <= 4], [0.0, 0.7, 1.0], np.maximum(0.0, 1.0 - (d - 4) / 3.0))


@feature("formation_cohesion", description="Cohesion with friendly units and the player's own units.")
def formation_cohesion(s: Situation):
    cohesion = np.where(s.mates.any(axis=1), np.maximum(0.0, 1.0 - s.mates_centroid_distance / 15.0), 1.0)
    nearest = np.sort(np.where(s.own, s.d, np.iinfo(np.int64).max), axis=1)[:, :4]
    taken = np.arange(nearest.shape[1]) < np.minimum(_count(s.own), 4)[:, None]
    d = nearest.astype(np.float64)
    count = np.maximum(taken.sum(axis=1), 1)
    mean_q = np.where(taken, _pattern_score(d), 0.0).sum(axis=1) / count
    good = (taken & (d >= 1) & (d <= 4)).sum(axis=1)
    pattern = np.where(s.own.any(axis=1), clamp01(mean_q + 0.2 * clamp01(good / 4.0)), 0.5)
    return 0.6 * cohesion + 0.4 * pattern


@feature("formation_separation", description="Distance to the nearest friend: too close scores lower.")
def formation_separation(s: Situation):
    nearest = np.where(s.mates, s.d, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
    return np.where(s.mates.any(axis=1) & (nearest < 2), nearest / 2.0, 1.0)


@feature("formation_alignment", bounds=(0.36, 0.76), description="Agreement of the facing with the mates' most frequent facing.")
def formation_alignment(s: Situation):
    facings = np.arange(6)
    matches = s.mates[:, :, None] & (s.u_facing[:, :, None] == facings)  # [M, K, 6]
    counts = matches.sum(axis=1)
    first_seen = np.where(matches.any(axis=1), np.argmax(matches, axis=1), np.iinfo(np.int64).max)
    most = counts == counts.max(axis=1, keepdims=True)
    leader = np.argmin(np.where(most, first_seen, np.iinfo(np.int64).max), axis=1)
    aligned = 0.4 * (1.0 - hexgrid.facing_difference(s.facing, leader) / 3.0) + 0.36
    return np.where(s.mates.any(axis=1), aligned, 0.5)


@feature("friendly_artillery_fire", description="Long-range friendly support reaching the destination.")
def friendly_artillery_fire(s: Situation):
    artillery = s.mates & (s.u_max_range >= 22) & (s.d <= 17)
    best = _masked_max(s.u_max_range - 17.0, artillery)
    return clamp01(best / (np.maximum(s.range, 0.0) + 1.0))


@feature("covering_units", description="Friendly units whose weapon range covers the destination, divided by 5.")
def covering_units(s: Situation):
    return clamp01(_count(s.mates & (s.d <= s.u_max_range)) / 5.0)


@feature("heat_management", description="Heat of a Mek relative to 40 (others: 0).")
def heat_management(s: Situation):
    is_mek = np.char.find(s.unit_type.astype(str), "Mek") >= 0
    return clamp01(1.0 - np.where(is_mek, s.heat / 40.0, s.heat / 999.0))


@feature("enemy_vip_distance", description="Closeness to high-damage enemies (total damage above 60) within range.")
def enemy_vip_distance(s: Situation):
    vips = s.enemies & (s.u_total_damage > 60)
    nearest = -_masked_max(-s.d.astype(np.float64), vips)
    ok = vips.any(axis=1) & (s.range > 0)
    return np.where(ok, clamp01(1.0 - nearest / np.where(s.range > 0, s.range, 1.0)), 0.0)


@feature("is_crippled", description="1 if the mover is crippled.")
def is_crippled(s: Situation):
    return s.crippled


@feature("moving_toward_waypoint", description="1 if the move brings the unit closer to the enemy centroid.")
def moving_toward_waypoint(s: Situation):
    cx, cy = hexgrid.centroid(s.u_x, s.u_y, s.enemies)
    closer = hexgrid.distance(s.px, s.py, cx, cy) < hexgrid.distance(s.p0x, s.p0y, cx, cy)
    return s.enemies.any(axis=1) & closer


@feature("unit_role", description="How well the destination suits the mover's role (sniper, brawler, scout, ...).")
def unit_role(s: Situation):
    r = s.range
    r_safe = np.where(r > 0, r, 1.0)
    d_c = s.d_c
    no_enemy = ~np.isfinite(d_c)
    d = np.where(no_enemy, 0.0, d_c)
    n_t = _count(s.threatening)
    ambush_x = np.where(r > 0, clamp01(1.0 - d_c / np.minimum(7.0, r_safe)), 0.0)
    scores = {
        "SNIPER": np.where(r > 0, 1.0 - np.abs(d - 0.7 * r) / (0.3 * r_safe), 0.0),
        "STRIKER": 1.0 - d / 10.0,
        "JUGGERNAUT": 1.0 - d / 7.0,
        "MISSILE_BOAT": np.where(r > 0, 1.0 - np.abs(d - r) / r_safe, 0.0),
    }
    score = np.full(s.n, 0.5)
    for role, value in scores.items():
        score = np.where(s.role == ROLE[role], np.where(no_enemy, 0.0, value), score)
    score = np.where(s.role == ROLE["SCOUT"], s.tau / (n_t + 1), score)
    score = np.where(s.role == ROLE["BRAWLER"], 3.0 / (n_t + 1), score)
    score = np.where(s.role == ROLE["SKIRMISHER"], 0.6 * s.tau + 0.4 * damage_ratio(s), score)
    score = np.where(s.role == ROLE["AMBUSHER"], 0.7 / (n_t + 1) + 0.3 * ambush_x, score)
    return clamp01(score)


def _threat_by(role: str):
    def threat(s: Situation):
        sources = s.enemies & (s.u_role == ROLE[role]) & (s.u_max_range > 0) & (s.d <= s.u_max_range)
        share = clamp01(s.u_total_damage / np.maximum(s.hp, 1.0)[:, None])
        falloff = 1.0 - s.d / np.where(s.u_max_range > 0, s.u_max_range, 1.0)
        return clamp01(np.where(sources, share * falloff, 0.0).sum(axis=1))
    return threat


feature("threat_by_sniper", description="Damage share that enemy snipers in range can deal to the mover.")(
    _threat_by("SNIPER"))
feature("threat_by_missile_boat", description="Damage share that enemy missile boats in range can deal to the mover.")(
    _threat_by("MISSILE_BOAT"))
feature("threat_by_juggernaut", description="Damage share that enemy juggernauts in range can deal to the mover.")(
    _threat_by("JUGGERNAUT"))


@feature("unit_tmm", description="Target movement modifier earned by the move (τ / 7).")
def unit_tmm(s: Situation):
    return s.tau


@feature("piloting_caution", description="The larger of the piloting-roll chance of failure and the environmental hazard.")
def piloting_caution(s: Situation):
    return clamp01(np.maximum(s.chance_of_failure, environmental_hazards(s)))


@feature("retreat", description="Need to retreat: damage taken, discounted by distance to the closest enemy.")
def retreat(s: Situation):
    return clamp01((1.0 - s.h_m) / np.maximum(1.0, s.d_c / 3.0))


@feature("scouting", description="Scout-like movement: ahead of the friendly centroid with MP to spare.")
def scouting(s: Situation):
    spread = np.where(s.mates.any(axis=1), s.mates_centroid_distance, 0.0)
    value = (0.4 * s.has_role("SCOUT") + 0.3 * (s.max_mp >= 8)
             + 0.2 * np.minimum(s.hexes_moved / np.maximum(1.0, s.max_mp), 1.0)
             + 0.1 * np.minimum(spread / 15.0, 1.0))
    return clamp01(value)


@feature("standing_still", description="1 if the unit did not move.")
def standing_still(s: Situation):
    return s.hexes_moved == 0


CONTROL_RADIUS = 7
# Cube offsets (dq, dr) of the hexes within CONTROL_RADIUS of a centre: its disk.
DISK = np.array([(dq, dr) for dq in range(-CONTROL_RADIUS, CONTROL_RADIUS + 1)
                 for dr in range(-CONTROL_RADIUS, CONTROL_RADIUS + 1)
                 if max(abs(dq), abs(dr), abs(dq + dr)) <= CONTROL_RADIUS])
REACH = 2 * CONTROL_RADIUS  # a unit farther than this from the centre covers none of its disk


def _disk_cover_table() -> np.ndarray:
    """[offset index, disk hex] -> whether a unit at that cube offset from the centre controls
    that hex of the centre's disk; the last row (units out of reach) controls nothing."""
    offsets = np.array([(q, r) for q in range(-REACH, REACH + 1) for r in range(-REACH, REACH + 1)])
    dq = offsets[:, None, 0] - DISK[None, :, 0]
    dr = offsets[:, None, 1] - DISK[None, :, 1]
    near = np.maximum(np.maximum(np.abs(dq), np.abs(dr)), np.abs(dq + dr)) <= CONTROL_RADIUS
    return np.vstack([near, np.zeros((1, len(DISK)), dtype=bool)])


DISK_COVER = _disk_cover_table()


def _controlled_disk(cx, cy, ux, uy, mask) -> np.ndarray:
    """[M, |DISK|]: which hexes of the disk around (cx, cy) some selected unit controls."""
    q0, r0, _ = hexgrid.to_cube(cx, cy)
    q, r, _ = hexgrid.to_cube(ux, uy)
    dq, dr = q - q0[:, None], r - r0[:, None]
    near = mask & (np.maximum(np.maximum(np.abs(dq), np.abs(dr)), np.abs(dq + dr)) <= REACH)
    index = np.where(near, (dq + REACH) * (2 * REACH + 1) + dr + REACH, len(DISK_COVER) - 1)
    return DISK_COVER[index].any(axis=1)


def _disk_on_board(cx, cy, width, height) -> np.ndarray:
    """[M, |DISK|]: the disk's hexes that lie on the board; none if the centre is off the board."""
    q0, r0, _ = hexgrid.to_cube(cx, cy)
    x = q0[:, None] + DISK[:, 0]
    y = r0[:, None] + DISK[:, 1] + (x - (x % 2)) // 2
    w, h = width[:, None], height[:, None]
    centre_on_board = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    return (x >= 0) & (x < w) & (y >= 0) & (y < h) & centre_on_board[:, None]


@feature("strategic_goal", description="Board control gained, and enemy control disputed, by moving from P0 to P.")
def strategic_goal(s: Situation):
    """Board control gained, and enemy control disputed, by moving from P0 to P. Only the disks
    around P and P0 can change: ctrl(after) - ctrl(before) = |D(P) minus A| - |D(P0) minus A|."""
    new_p = _disk_on_board(s.px, s.py, s.width, s.height) & ~_controlled_disk(s.px, s.py, s.u_x, s.u_y, s.mates)
    new_p0 = _disk_on_board(s.p0x, s.p0y, s.width, s.height) & ~_controlled_disk(s.p0x, s.p0y, s.u_x, s.u_y, s.mates)
    enemy_p = _controlled_disk(s.px, s.py, s.u_x, s.u_y, s.enemies)
    enemy_p0 = _controlled_disk(s.p0x, s.p0y, s.u_x, s.u_y, s.enemies)
    n = (s.width * s.height).astype(np.float64)
    gained = (new_p.sum(axis=1) - new_p0.sum(axis=1)) / n
    disputed = ((new_p0 & enemy_p0).sum(axis=1) - (new_p & enemy_p).sum(axis=1)) / n
    return clamp01(0.7 * clamp01(gained + 0.5) + 0.3 * clamp01(disputed + 0.5))


@feature("target_health", description="Health fraction of the closest enemy (0.5 with none).")
def target_health(s: Situation):
    return np.where(s.closest_enemy >= 0, s.at(s.u_health, s.closest_enemy), 0.5)


@feature("target_within_optimal_range", description="Whether the closest enemy is at the mover's best engagement range.")
def target_within_optimal_range(s: Situation):
    r = s.range.astype(np.int64)
    low = (7 * r) // 10
    inside = s.enemies & (s.d >= low[:, None]) & (s.d <= r[:, None])
    n_enemies = _count(s.enemies)
    ok = (s.range > 0) & (n_enemies > 0)
    return np.where(ok, _count(inside) / np.maximum(n_enemies, 1), 0.0)


@feature("turns_to_encounter", description="How soon the closest enemy can reach the mover, from its MP.")
def turns_to_encounter(s: Situation):
    v = s.at(s.u_mp, s.closest_enemy)
    ok = (s.closest_enemy >= 0) & (v > 0)
    return np.where(ok, clamp01(1.0 - (s.d_c / np.where(ok, v, 1.0)) / 5.0), 0.0)


@feature("chance_of_failure", description="Piloting-roll chance of failure of the move (M.CHANCE_OF_FAILURE).")
def chance_of_failure(s: Situation):
    return clamp01(s.chance_of_failure)


@feature("self_threat_level", description="Threat to the mover from the most dangerous enemy able to reach it.")
def self_threat_level(s: Situation):
    target = s.closest_target
    d = s.d_c_star
    a = np.where(d <= np.maximum(s.range, 1.0), 1.0, 0.6)
    b = np.where(d <= np.maximum(s.at(s.u_max_range, target), 1.0), 0.8, 1.0)
    hp = s.at(s.u_hp, target)
    return np.where(target >= 0, clamp01(s.damage / np.where(hp > 0, hp, 1.0) * a * b), 0.0)
