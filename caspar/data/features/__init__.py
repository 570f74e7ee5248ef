"""Feature set v1 (FEATURES.md): which moves become rows, their 354 features and the reward."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Importing the feature modules registers their features; scalar features come first (§3.2).
from caspar.data.features import scalar  # noqa: F401  isort: skip
from caspar.data.features import blocks  # noqa: F401  isort: skip
from caspar.data.features.registry import REGISTRY, compute_all, feature, feature_bounds, feature_names, markdown, schema
from caspar.data.features.reward import reward
from caspar.data.features.situation import EXCLUDED_TYPES, Game, Situation
from caspar.data.features.units import UnitPoints, load_unit_points
from caspar.data.gamelog import GameLog, Problem

__all__ = [
    "REGISTRY", "Rows", "UnitPoints", "feature", "feature_bounds", "feature_names", "featurize", "load_unit_points",
    "markdown", "schema", "select_moves",
]


@dataclass
class Rows:
    """The rows of one log: identity columns, features [N, width] and reward [N]."""
    segment: np.ndarray
    round: np.ndarray
    player_id: np.ndarray
    team_id: np.ndarray
    entity_id: np.ndarray
    move_index: np.ndarray
    is_bot: np.ndarray
    features: np.ndarray
    reward: np.ndarray
    moves_read: int  # all move rows of the file
    human_moves: int
    dropped: dict[str, int]  # moves that did not become rows, by reason


    def __len__(self) -> int:
        return len(self.reward)


def select_moves(game: Game, include_bots: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Move rows that become dataset rows (§3.1), the state row of each mover (`me`, §2.2), and
    how many moves were left out, by reason.

    Args:
        game: the Game of a log.
        include_bots: the bot's moves too.

    Returns:
        (move rows [M], the mover's state row of each [M], {reason: moves left out}).
    """
    moves = game.log.moves
    n_blocks = len(game.block_round)
    is_bot = np.nan_to_num(moves["IS_BOT"].to_numpy(zero_copy_only=False).astype(float)) == 1
    block = moves["next_block"].to_numpy()
    entity = np.nan_to_num(moves["ENTITY_ID"].to_numpy(zero_copy_only=False).astype(float), nan=-1).astype(np.int64)
    has_snapshot = block < n_blocks
    me = np.where(has_snapshot, game.row_of(np.minimum(block, max(n_blocks - 1, 0)), entity), -1)
    for m in np.flatnonzero((me < 0) & has_snapshot):  # mover absent from its snapshot (rare)
        me[m] = game.latest_row_before(int(block[m]), int(entity[m]))
    found = me >= 0
    allowed_type = ~np.isin(game.types[np.maximum(me, 0)], list(EXCLUDED_TYPES)) if len(game.types) else found
    wanted = include_bots | ~is_bot
    selected = found & allowed_type & wanted
    dropped = {"bot moves": int((~wanted).sum()), "mover not found": int((wanted & ~found).sum())}
    excluded_types = game.types[me[wanted & found & ~allowed_type]] if len(game.types) else []
    for unit_type, count in zip(*np.unique(np.asarray(excluded_types, dtype=str), return_counts=True)):
        dropped[f"{unit_type} (type not modelled)"] = int(count)
    return np.flatnonzero(selected), me[selected], {k: v for k, v in dropped.items() if v}


def featurize(log: GameLog, points: UnitPoints, include_bots: bool = False) -> Rows:
    """The rows of one log. A move whose values are not all finite numbers (a value missing where
    a feature needs it) is skipped and reported in `log.problems` with its line.

    Args:
        log: a parsed GameLog.
        points: the units' full armour and internal points.
        include_bots: the bot's moves too.

    Returns:
        The Rows: identity columns, features [N, width], reward [N].
    """
    game = Game(log, points)
    move_rows, me_rows, dropped = select_moves(game, include_bots)
    s = Situation(game, move_rows, me_rows)
    features, rewards = compute_all(s), reward(s)
    finite = np.isfinite(features).all(axis=1) & np.isfinite(rewards)
    if not finite.all():
        lines = log.moves["line"].to_numpy()[move_rows[~finite]]
        for line, values in zip(lines.tolist(), features[~finite]):
            names = [n for n, ok in zip(feature_names(), np.isfinite(values)) if not ok] or ["reward"]
            log.problems.append(Problem(log.moves_file or log.name, int(line), f"move skipped: {', '.join(names[:3])} not a finite "
                                                              "number (a value it needs is missing)"))
        dropped["moves with a missing value"] = int((~finite).sum())
    is_bot = np.nan_to_num(log.moves["IS_BOT"].to_numpy(zero_copy_only=False).astype(float)) == 1
    keep = np.flatnonzero(finite)
    return Rows(
        segment=s.segment[keep], round=s.round.astype(np.int64)[keep], player_id=s.player[keep], team_id=s.team[keep],
        entity_id=s.entity[keep], move_index=move_rows[keep], is_bot=s.is_bot[keep], features=features[keep],
        reward=rewards[keep], moves_read=log.moves.num_rows, human_moves=int((~is_bot).sum()), dropped=dropped,
    )
