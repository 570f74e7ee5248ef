"""The training target (FEATURES.md §6): how well the mover's side and the mover fared by the
next round, scaled down when the move ends closer to an enemy than its role likes."""
from __future__ import annotations

import numpy as np

from caspar.data.features.situation import ROLE, Situation, clamp01

# Role -> the distance (hexes) below which the reward is scaled down.
ROLE_MIN_DISTANCE = {
    "MISSILE_BOAT": 8, "JUGGERNAUT": 4, "SNIPER": 10, "SCOUT": 8, "STRIKER": 6, "AMBUSHER": 6,
    "BRAWLER": 1, "SKIRMISHER": 6,
}
OTHER_ROLE_MIN_DISTANCE = 3


def future_snapshot(s: Situation) -> np.ndarray:
    """Φ: the snapshot each move's outcome is read from.

    Args:
        s: the Situation of M moves.

    Returns:
        [M] the block of the first snapshot of the segment with a round above the move's, else the
        segment's last.
    """
    game = s.game
    last = game.segment_last_block[s.block]
    # Rounds never fall within a segment, so a search over the segment's blocks finds Φ.
    phi = np.searchsorted(game.block_segment * 1e6 + game.block_round, s.segment * 1e6 + s.round, "right")
    return np.where(phi <= last, phi, last)


def reward(s: Situation) -> np.ndarray:
    """The target of every move (FEATURES.md's reward): at Φ, 0.5 x its team's share of the battle
    value alive + 0.3 x the health the mover kept + 0.2 if it survived, times the distance modifier
    (how near its role's distance from the closest enemy it stayed).

    Args:
        s: the Situation of M moves.

    Returns:
        [M] rewards in [0, 1].
    """
    game = s.game
    phi = future_snapshot(s)
    alive = ~game.destroyed
    teams, team_index = np.unique(game.team, return_inverse=True)
    bv_by_team = np.zeros((len(game.block_round), max(len(teams), 1)))
    np.add.at(bv_by_team, (game.block[alive], team_index[alive]), game.bv[alive])
    own_team = np.searchsorted(teams, s.team).clip(0, len(teams) - 1)
    allied = np.where(teams[own_team] == s.team, bv_by_team[phi, own_team], 0.0)
    allied_share = allied / np.maximum(bv_by_team[phi].sum(axis=1), 1.0)

    row = game.row_of(phi, s.entity)
    survived = (row >= 0) & ~game.destroyed[row]
    h0 = s.h_m
    later_health = game.health[row]
    retention = np.where(survived & (h0 > 0), np.minimum(1.0, later_health / np.where(h0 > 0, h0, 1.0)), 0.0)

    role_distance = np.full(len(ROLE), float(OTHER_ROLE_MIN_DISTANCE))
    for role, distance in ROLE_MIN_DISTANCE.items():
        role_distance[ROLE[role]] = distance
    threshold = np.where(s.role >= 0, role_distance[np.maximum(s.role, 0)], OTHER_ROLE_MIN_DISTANCE)
    distance_modifier = np.where(s.enemies.any(axis=1), clamp01(s.d_c / threshold), 1.0)
    return (0.5 * clamp01(allied_share) + 0.3 * retention + 0.2 * survived) * distance_modifier
