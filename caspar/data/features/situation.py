"""Everything a feature needs about a batch of moves, as numpy arrays (FEATURES.md §1, §2).

`Game` turns one read log into per-state-row arrays (segments, hit points, BV, health).
`Situation` holds the selected moves of the game: per-move arrays of shape [M] and the
snapshot `S` of each move padded to [M, K] (K = largest snapshot), with the unit sets
E (enemies), F (team mates) and O (own units) as boolean masks. Features are functions of a
Situation; nothing loops over units in Python.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa

from caspar.data.features import hexgrid
from caspar.data.features.units import UnitPoints
from caspar.data.gamelog import GameLog
from caspar.data.gamelog.log import UNIT_ROLES
from caspar.data.gamelog.log import column_numbers as _numbers

ROLES = list(UNIT_ROLES)
ROLE = {name: code for code, name in enumerate(ROLES)}
UNKNOWN_ROLE = -1
EXCLUDED_TYPES = {
    "AeroSpaceFighter", "Infantry", "FixedWingSupport", "ConvFighter", "Dropship", "EjectedCrew",
    "MekWarrior", "GunEmplacement", "BattleArmor",
}
NO_ENEMY = np.inf
ARC_COLUMNS = {"front": "ARMOR_FRONT_P", "right": "ARMOR_RIGHT_P", "left": "ARMOR_LEFT_P", "back": "ARMOR_BACK_P"}


def clamp01(v):
    """Clips to [0, 1].

    Args:
        v: values.

    Returns:
        v clipped to [0, 1].
    """
    return np.clip(v, 0.0, 1.0)


def health(armor_p, internal_p):
    """A unit's health (§2.6).

    Args:
        armor_p: armour fractions.
        internal_p: internal-structure fractions, shaped as armor_p.

    Returns:
        The mean of the valid fractions (finite, within [0, 1]); 1 where neither is valid.
    """
    valid_a = np.isfinite(armor_p) & (armor_p >= 0) & (armor_p <= 1)
    valid_i = np.isfinite(internal_p) & (internal_p >= 0) & (internal_p <= 1)
    count = valid_a.astype(np.int64) + valid_i
    total = np.where(valid_a, armor_p, 0.0) + np.where(valid_i, internal_p, 0.0)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def _ints(table: pa.Table, column: str, missing: int = -1) -> np.ndarray:
    values = _numbers(table, column)
    return np.where(np.isfinite(values), values, missing).astype(np.int64)


def _role_codes(roles: np.ndarray) -> np.ndarray:
    names, inverse = np.unique(roles.astype(str), return_inverse=True)
    return np.array([ROLE.get(n, UNKNOWN_ROLE) for n in names], dtype=np.int64)[inverse]


class Game:
    """Per-state-row and per-block arrays of one log, with segments and hit points resolved."""

    def __init__(self, log: GameLog, points: UnitPoints):
        self.log = log
        states = log.states
        self.block = states["block"].to_numpy()
        self.entity = _ints(states, "ENTITY_ID")
        self.player = _ints(states, "PLAYER_ID")
        self.team = _ints(states, "TEAM_ID")
        self.x = _ints(states, "X")
        self.y = _ints(states, "Y")
        self.facing = _ints(states, "FACING", 0)
        self.mp = _numbers(states, "MP")
        self.heat = _numbers(states, "HEAT")
        self.off_board = _numbers(states, "OFF_BOARD") == 1
        self.crippled = _numbers(states, "CRIPPLED") == 1
        self.destroyed = _numbers(states, "DESTROYED") == 1
        self.armor_p = _numbers(states, "ARMOR_P")
        self.internal_p = _numbers(states, "INTERNAL_P")
        self.max_range = np.nan_to_num(_numbers(states, "MAX_RANGE"))
        self.total_damage = np.nan_to_num(_numbers(states, "TOTAL_DAMAGE"))
        self.types = states["TYPE"].to_numpy(zero_copy_only=False)
        self.role = _role_codes(states["ROLE"].to_numpy(zero_copy_only=False))
        self.health = health(self.armor_p, self.internal_p)
        self.has_ecm = _numbers(states, "HAS_ECM") == 1  # logs from May 2025 on; else never
        self.arcs = {arc: _numbers(states, column) for arc, column in ARC_COLUMNS.items()}

        n_blocks = log.blocks.num_rows
        self.block_round = np.full(n_blocks, np.nan)
        self.block_round[self.block] = _numbers(states, "ROUND")
        self.block_round = _forward_fill(self.block_round)
        self.block_start = np.searchsorted(self.block, np.arange(n_blocks), "left")
        self.block_end = np.searchsorted(self.block, np.arange(n_blocks), "right")
        board = log.blocks["board"].to_numpy()
        starts_segment = np.zeros(n_blocks, dtype=bool)
        starts_segment[1:] = (board[1:] != board[:-1]) | (self.block_round[1:] < self.block_round[:-1])
        self.block_segment = np.cumsum(starts_segment)
        self.segment = self.block_segment[self.block]
        self.segment_last_block = np.searchsorted(self.block_segment, self.block_segment, "right") - 1
        # (block, entity) -> state row, for looking a unit up in a given snapshot
        self._keys = self.block * (1 << 32) + self.entity
        self._key_order = np.argsort(self._keys, kind="stable")
        self.hp = self._hit_points(points)
        self.bv = self._battle_values()
        self.default_board = self._board_from_units()

    def row_of(self, block: np.ndarray, entity: np.ndarray) -> np.ndarray:
        """The state rows of units in snapshots.

        Args:
            block: [N] snapshots.
            entity: [N] entity ids.

        Returns:
            [N] each entity's state row in its snapshot, or -1.
        """
        if not len(self._keys):
            return np.full(len(block), -1)
        keys = block * (1 << 32) + entity
        sorted_keys = self._keys[self._key_order]
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == keys, self._key_order[pos], -1)

    def latest_row_before(self, block: int, entity: int) -> int:
        """A unit's state row before a snapshot.

        Args:
            block: the snapshot.
            entity: the entity id.

        Returns:
            Its row in the latest earlier snapshot of the same segment, or -1.
        """
        candidates = np.flatnonzero((self.entity == entity) & (self.block < block)
                                    & (self.segment == self.block_segment[block]))
        return int(candidates[-1]) if len(candidates) else -1

    def _hit_points(self, points: UnitPoints) -> np.ndarray:
        """Current ARMOR + INTERNAL; for rows without them, full points from the unit table (§7)."""
        states = self.log.states
        armor, internal = _numbers(states, "ARMOR"), _numbers(states, "INTERNAL")
        hp = armor + internal
        missing = ~np.isfinite(hp)
        if not missing.any():
            return hp
        chassis = states["CHASSIS"].to_numpy(zero_copy_only=False)
        model = states["MODEL"].to_numpy(zero_copy_only=False)
        repaired = self._move_models()
        unit_keys = self.segment * (1 << 32) + self.entity
        keys, first_rows, inverse = np.unique(unit_keys, return_index=True, return_inverse=True)
        full = np.zeros((len(keys), 2))
        for k, (key, first) in enumerate(zip(keys.tolist(), first_rows.tolist())):
            unit_model = model[first]
            if unit_model == chassis[first]:
                if key in repaired:
                    unit_model = repaired[key]
                else:
                    rows = np.flatnonzero((unit_keys == key) & (chassis != model))
                    unit_model = model[rows[0]] if len(rows) else unit_model
            full[k] = points.lookup(chassis[first], unit_model, self.types[first])
        full_a, full_i = full[inverse, 0], full[inverse, 1]
        a_valid = np.isfinite(self.armor_p) & (self.armor_p >= 0) & (self.armor_p <= 1)
        i_valid = np.isfinite(self.internal_p) & (self.internal_p >= 0) & (self.internal_p <= 1)
        estimate = np.where(a_valid, full_a * self.armor_p, 0.0) + np.where(i_valid, full_i * self.internal_p, full_i)
        return np.where(missing, estimate, hp)

    def _move_models(self) -> dict[int, str]:
        """(segment, entity) key -> MODEL of the entity's first move row in that segment."""
        moves = self.log.moves
        next_block = moves["next_block"].to_numpy()
        known = next_block < len(self.block_segment)
        segment = self.block_segment[np.minimum(next_block, max(len(self.block_segment) - 1, 0))]
        keys = segment * (1 << 32) + _ints(moves, "ENTITY_ID")
        models = moves["MODEL"].to_numpy(zero_copy_only=False)
        result: dict[int, str] = {}
        for key, model, ok in zip(keys.tolist(), models, known.tolist()):
            if ok:
                result.setdefault(key, model)
        return result

    def _battle_values(self) -> np.ndarray:
        """BV per row; in a segment where any row lacks BV, every unit counts 1 (§6)."""
        bv = _numbers(self.log.states, "BV")
        lacking = np.zeros(self.block_segment.max() + 1 if len(self.block_segment) else 1, dtype=bool)
        np.logical_or.at(lacking, self.segment, ~np.isfinite(bv))
        return np.where(lacking[self.segment], 1.0, bv)

    def _board_from_units(self) -> tuple[int, int]:
        on_board = (self.x >= 0) & (self.y >= 0) & ~self.off_board
        if not on_board.any():
            return 0, 0
        return int(self.x[on_board].max()) + 1, int(self.y[on_board].max()) + 1


def _forward_fill(values: np.ndarray) -> np.ndarray:
    """Snapshots with no rows take the round of the snapshot before them."""
    index = np.where(np.isfinite(values), np.arange(len(values)), 0)
    np.maximum.accumulate(index, out=index)
    filled = values[index]
    return np.where(np.isfinite(filled), filled, 0.0)


class Situation:
    """The selected moves of one game with their snapshots, ready for the feature functions."""

    def __init__(self, game: Game, move_rows: np.ndarray, me_rows: np.ndarray):
        self.game = game
        moves = game.log.moves.take(pa.array(move_rows))
        self.n = len(move_rows)
        self.move_index = move_rows
        self.block = moves["next_block"].to_numpy()
        self.segment = game.block_segment[self.block]
        self.round = game.block_round[self.block]
        self.entity = _ints(moves, "ENTITY_ID")
        self.player = _ints(moves, "PLAYER_ID")
        self.px, self.py = _ints(moves, "TO_X"), _ints(moves, "TO_Y")
        self.p0x, self.p0y = _ints(moves, "FROM_X"), _ints(moves, "FROM_Y")
        self.facing = _ints(moves, "FACING", 0)
        self.hexes_moved = np.nan_to_num(_numbers(moves, "HEXES_MOVED"))
        self.distance = np.nan_to_num(_numbers(moves, "DISTANCE"))
        self.mp_used = np.nan_to_num(_numbers(moves, "MP_USED"))
        self.max_mp = np.nan_to_num(_numbers(moves, "MAX_MP"))
        self.mp_p = np.nan_to_num(_numbers(moves, "MP_P"))
        self.heat_p = np.nan_to_num(_numbers(moves, "HEAT_P"))
        self.armor_p = _numbers(moves, "ARMOR_P")
        self.internal_p = _numbers(moves, "INTERNAL_P")
        self.jumping = _numbers(moves, "JUMPING") == 1
        self.prone = _numbers(moves, "PRONE") == 1
        self.chance_of_failure = np.nan_to_num(_numbers(moves, "CHANCE_OF_FAILURE"))
        self.is_bot = _numbers(moves, "IS_BOT") == 1
        self.h_m = health(self.armor_p, self.internal_p)
        # Per-arc armour: the move row's, else the mover's state row's, else the average health.
        self.arc_health = {arc: _first_valid(_numbers(moves, column), game.arcs[arc][me_rows], self.h_m)
                           for arc, column in ARC_COLUMNS.items()}

        me = me_rows
        team = _numbers(moves, "TEAM_ID")
        self.team = np.where(np.isfinite(team), team, game.team[me]).astype(np.int64)
        self.role = game.role[me]
        self.range = game.max_range[me]
        self.damage = game.total_damage[me]
        self.hp = game.hp[me]
        self.heat = game.heat[me]
        self.crippled = game.crippled[me]
        self.unit_type = game.types[me]

        board = moves["board"].to_numpy()
        widths = np.array([b.width for b in game.log.boards] + [game.default_board[0]])
        heights = np.array([b.height for b in game.log.boards] + [game.default_board[1]])
        self.width, self.height = widths[board], heights[board]  # board -1 -> the default

        # The snapshot S of each move, padded to [M, K]
        start, end = game.block_start[self.block], game.block_end[self.block]
        k = max(int((end - start).max()), 1) if self.n else 1
        rows = start[:, None] + np.arange(k)
        in_snapshot = rows < end[:, None]
        rows = np.where(in_snapshot, rows, 0)
        self.unit_rows = rows
        self.has_ecm = game.has_ecm[me]
        def units(values: np.ndarray) -> np.ndarray:
            """[M, K]: a per-state-row array at each move's snapshot units."""
            return values[rows] if len(game.entity) else np.zeros_like(rows)

        self.u_x, self.u_y, self.u_facing, self.u_mp = units(game.x), units(game.y), units(game.facing), units(game.mp)
        self.u_max_range, self.u_total_damage, self.u_hp = units(game.max_range), units(game.total_damage), units(game.hp)
        self.u_role, self.u_team, self.u_player, self.u_entity = (units(game.role), units(game.team), units(game.player),
                                                                  units(game.entity))
        self.u_armor_p, self.u_internal_p, self.u_health = units(game.armor_p), units(game.internal_p), units(game.health)
        self.u_has_ecm = units(game.has_ecm)
        eligible = (in_snapshot & (self.u_entity != self.entity[:, None])
                    & (self.u_x >= 0) & (self.u_x < self.width[:, None])
                    & (self.u_y >= 0) & (self.u_y < self.height[:, None])
                    & ~game.off_board[rows] & ~game.destroyed[rows])
        self.enemies = eligible & (self.u_team != self.team[:, None])
        self.mates = eligible & (self.u_team == self.team[:, None])
        self.own = eligible & (self.u_player == self.player[:, None])
        self.d = hexgrid.distance(self.px[:, None], self.py[:, None], self.u_x, self.u_y)

    # Shared quantities (§2.5, §2.8), computed once per batch when first used.

    @cached_property
    def closest_enemy(self) -> np.ndarray:
        """Slot of c in the snapshot (first of the smallest distance); -1 with no enemy."""
        return _first_min(self.d, self.enemies)

    @cached_property
    def d_c(self) -> np.ndarray:
        """[M] the distance to c, the closest enemy (NO_ENEMY without one)."""
        return _distance_at(self.d, self.closest_enemy)

    @cached_property
    def closest_target(self) -> np.ndarray:
        """Slot of c*, the closest enemy with hit points left; -1 if none."""
        return _first_min(self.d, self.enemies & (self.u_hp > 0))

    @cached_property
    def d_c_star(self) -> np.ndarray:
        """[M] the distance to c*, the closest enemy with hit points left (NO_ENEMY without one)."""
        return _distance_at(self.d, self.closest_target)

    @cached_property
    def threatening(self) -> np.ndarray:
        """[M, K] the enemies whose maximum range reaches the mover's hex."""
        return self.enemies & (self.d <= self.u_max_range)

    @cached_property
    def tau(self) -> np.ndarray:
        """[M] the move's target-movement modifier, scaled to [0, 1] (hexes moved, jump, prone, still)."""
        h = self.hexes_moved
        bins = np.searchsorted([3, 5, 7, 10, 18, 25], h, side="right")
        t = bins + self.jumping - 2.0 * self.prone - 4.0 * (h == 0)
        return clamp01(t / 7.0)

    @cached_property
    def mates_centroid_distance(self) -> np.ndarray:
        """[M] the distance from the mover's hex to its team mates' centroid hex."""
        cx, cy = hexgrid.centroid(self.u_x, self.u_y, self.mates)
        return hexgrid.distance(self.px, self.py, cx, cy).astype(np.float64)

    def at(self, values: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """One snapshot unit's value per move.

        Args:
            values: [M, K] per move and snapshot unit.
            slot: [M] the unit's slot (-1 gives slot 0: callers mask it).

        Returns:
            [M] values[m, slot[m]].
        """
        return values[np.arange(self.n), np.maximum(slot, 0)]

    def has_role(self, *names: str) -> np.ndarray:
        """Returns [M] whether the mover's role is one of `names`."""
        return np.isin(self.role, [ROLE[n] for n in names])


def _first_valid(*fractions: np.ndarray) -> np.ndarray:
    """Per element, the first of the arrays whose value is a valid fraction (finite, in [0, 1])."""
    result = fractions[-1]
    for values in reversed(fractions[:-1]):
        result = np.where(np.isfinite(values) & (values >= 0) & (values <= 1), values, result)
    return result


def _first_min(d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    masked = np.where(mask, d, np.iinfo(np.int64).max)
    slot = np.argmin(masked, axis=1) if masked.shape[1] else np.zeros(len(d), np.int64)
    return np.where(mask.any(axis=1), slot, -1)


def _distance_at(d: np.ndarray, slot: np.ndarray) -> np.ndarray:
    values = d[np.arange(len(d)), np.maximum(slot, 0)].astype(np.float64)
    return np.where(slot >= 0, values, NO_ENEMY)
