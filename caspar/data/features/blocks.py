"""Feature blocks (FEATURES.md §5): role one-hot, threat heatmaps, top threats, radar."""
from __future__ import annotations

import numpy as np

from caspar.data.features.registry import feature
from caspar.data.features.situation import ROLES, Situation, clamp01

GRID = 10  # heatmap cells per side
SMOOTHING_RADIUS = 3
SMOOTHING_OFFSETS = [
    (dx, dy, 1.0 + np.hypot(dx, dy))
    for dx in range(-SMOOTHING_RADIUS, SMOOTHING_RADIUS + 1)
    for dy in range(-SMOOTHING_RADIUS, SMOOTHING_RADIUS + 1)
    if (dx, dy) != (0, 0) and np.hypot(dx, dy) <= SMOOTHING_RADIUS
]
RADAR = 9
RADAR_CENTRE = RADAR // 2


@feature("unit_role_onehot", width=len(ROLES), names=[f"unit_role_{i}" for i in range(len(ROLES))],
         description="The mover's role, one-hot over 16 roles.")
def unit_role_one_hot(s: Situation):
    return s.role[:, None] == np.arange(len(ROLES))


def _heatmap(x, y, value, mask, width, height) -> np.ndarray:
    """[M, 100]: max of `value` per 10x10 board cell, smoothed, scaled to unit norm (§5.2)."""
    n = x.shape[0]
    gx = (GRID * x) // width[:, None]
    gy = (GRID * y) // height[:, None]
    raw = np.zeros((n, GRID + 2 * SMOOTHING_RADIUS, GRID + 2 * SMOOTHING_RADIUS))
    rows = np.broadcast_to(np.arange(n)[:, None], x.shape)
    pad = SMOOTHING_RADIUS
    np.maximum.at(raw, (rows[mask], gy[mask] + pad, gx[mask] + pad), value[mask])
    out = raw[:, pad:pad + GRID, pad:pad + GRID].copy()
    scaled = {scale: raw / scale for scale in {scale for _, _, scale in SMOOTHING_OFFSETS}}
    for dx, dy, scale in SMOOTHING_OFFSETS:
        # out[ny][nx] gets raw[ny - dy][nx - dx] / scale
        np.maximum(out, scaled[scale][:, pad - dy:pad - dy + GRID, pad - dx:pad - dx + GRID], out=out)
    out = out.reshape(n, GRID * GRID)
    norm = np.sqrt((out ** 2).sum(axis=1, keepdims=True))
    return np.where(norm > 0, out / np.where(norm > 0, norm, 1.0), 0.0)


@feature("enemy_threat_heatmap", width=GRID * GRID,
         description="10 × 10 map of the board: enemy weapon ranges, smoothed and normalised.")
def enemy_threat_heatmap(s: Situation):
    return _heatmap(s.u_x, s.u_y, s.u_max_range, s.enemies, s.width, s.height)


@feature("friendly_threat_heatmap", width=GRID * GRID,
         description="10 × 10 map of the board: team mates' and the mover's weapon ranges, normalised.")
def friendly_threat_heatmap(s: Situation):
    mover_on_board = (s.px >= 0) & (s.px < s.width) & (s.py >= 0) & (s.py < s.height)
    x = np.concatenate([s.u_x, s.px[:, None]], axis=1)
    y = np.concatenate([s.u_y, s.py[:, None]], axis=1)
    value = np.concatenate([s.u_max_range, s.range[:, None]], axis=1)
    mask = np.concatenate([s.mates, mover_on_board[:, None]], axis=1)
    return _heatmap(x, y, value, mask, s.width, s.height)


def _top(values, mask, slots) -> np.ndarray:
    """The `slots` largest masked values per row, descending, padded with 0."""
    ranked = -np.sort(-np.where(mask, values, -np.inf), axis=1)[:, :slots]
    ranked = np.where(np.isfinite(ranked), ranked, 0.0)
    return np.pad(ranked, ((0, 0), (0, slots - ranked.shape[1])))


@feature("closest_enemy", width=4,
         description="The four largest per-enemy threats to the mover, largest first (0 for missing enemies).")
def closest_enemy(s: Situation):
    a = np.where(s.d <= np.maximum(s.range, 1.0)[:, None], 0.8, 1.0)
    b = np.where(s.d <= np.maximum(s.u_max_range, 1.0), 1.0, 0.5)
    threat = s.u_total_damage / np.maximum(s.hp, 1.0)[:, None] * (1.0 - 0.7 * s.tau)[:, None] * a * b
    return _top(clamp01(threat), s.enemies, 4)


@feature("closest_friend", width=3,
         description="The three largest supports of team mates against the closest valid target.")
def closest_friend(s: Situation):
    target = s.closest_target
    target_hp = s.at(s.u_hp, target)
    b = np.where(s.d <= np.maximum(s.u_max_range, 1.0), 1.0, 0.5)
    support = clamp01(s.u_total_damage / np.where(target_hp > 0, target_hp, 1.0)[:, None] * b)
    return np.where((target >= 0)[:, None], _top(support, s.mates, 3), 0.0)


def _round_half_away(v):
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


@feature("radar", width=RADAR * RADAR, bounds=(-1.0, 3.0), names=[f"radar_{r}_{c}" for r in range(RADAR) for c in range(RADAR)],
         description="9 × 9 window centred on the mover: 3 at the centre, −1 enemy, +1 team mate, 0 empty.")
def radar(s: Situation):
    dx = s.u_x - s.px[:, None]
    dy = (s.u_y - s.py[:, None]) + ((s.px[:, None] % 2 == 0) & (s.u_x % 2 == 1))
    reach = np.maximum(np.abs(dx), np.abs(dy))
    inside = reach <= RADAR_CENTRE
    scale = RADAR_CENTRE / np.maximum(reach, 1)
    row = RADAR_CENTRE + np.where(inside, dy, _round_half_away(dy * scale))
    col = RADAR_CENTRE + np.where(inside, dx, _round_half_away(dx * scale))
    cell = row * RADAR + col
    grid = np.zeros((s.n, RADAR * RADAR))
    moves = np.broadcast_to(np.arange(s.n)[:, None], cell.shape)
    grid[moves[s.mates], cell[s.mates]] = 1.0
    grid[moves[s.enemies], cell[s.enemies]] = -1.0  # enemies win a shared cell
    grid[:, RADAR_CENTRE * RADAR + RADAR_CENTRE] = 3.0
    return grid
