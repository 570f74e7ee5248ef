"""One game's rows: its moves featurised (caspar.data.features), split by game with a seeded hash,
as an Arrow table with its manifest entry. The per-game work of every prepare, in a Ray worker or
in the preparing process."""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa

from caspar.config import PrepareConfig
from caspar.data.features import feature_names, featurize, load_unit_points
from caspar.data.gamelog import read_game

# The options of prepare that shape a game's rows: the manifest records them as its "settings"
ROW_SETTINGS = ("include_bots", "seed", "test_size", "validation_size", "mekfile")
SYNTHETIC_BOARD = "Synthetic #"  # the board name of caspar.data.samples' logs (make demo)
PROBLEMS_KEPT = 20  # per file in the manifest; the rest are counted
ID_COLUMNS = [
    ("file", pa.string()), ("segment", pa.int32()), ("round", pa.int32()), ("player_id", pa.int32()),
    ("team_id", pa.int32()), ("entity_id", pa.int32()), ("move_index", pa.int32()),
    ("is_bot", pa.bool_()), ("split", pa.string()),
]


def row_schema() -> pa.Schema:
    """Identity columns, the feature vector as one fixed-size list (order and names: schema.json)
    and the reward."""
    width = len(feature_names())
    return pa.schema(ID_COLUMNS + [("features", pa.list_(pa.float32(), width)), ("reward", pa.float32())])


# --- One file -> rows -------------------------------------------------------------------------

def split_of(file: str, segments: np.ndarray, seed: int, test_size: float, validation_size: float) -> np.ndarray:
    """Deterministic split per game (file, segment): a seeded hash, so a game's split does not
    depend on which other logs are in the input.

    Args:
        file: the game's name.
        segments: [rows] the segment of each row (a log holding two games has two).
        seed: the split's seed.
        test_size: the share of games in test.
        validation_size: the share in val.

    Returns:
        [rows] "train", "val" or "test".
    """
    result = np.empty(len(segments), dtype=object)
    for segment in np.unique(segments):
        digest = hashlib.sha256(f"{seed}:{file}:{segment}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        result[segments == segment] = "test" if u < test_size else "val" if u < test_size + validation_size else "train"
    return result


@functools.lru_cache(maxsize=4)
def _unit_points(mekfile: str | None):
    return load_unit_points(mekfile=mekfile)


def rows_of_game(files: dict[str, bytes], name: str, settings: PrepareConfig) -> tuple[pa.Table, dict]:
    """Featurise one game (a log, or the four files of a split game): its rows as an Arrow table,
    and its manifest entry.

    Args:
        files: {file name: its bytes}.
        name: the game's name.
        settings: the prepare's options (ROW_SETTINGS).

    Returns:
        (rows, entry): a log that cannot be read at all gives no rows and an entry naming its
        problem (reported, not raised: the other games go on).
    """
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(files[file])
    entry = {"file": name, "sha256": digest.hexdigest(), "bytes": sum(len(d) for d in files.values()),
             "format": None, "rows": 0, "moves": 0, "human_moves": 0, "problems": []}
    try:
        log = read_game(files, name)
        entry["format"] = log.format
        entry["synthetic"] = any(board.name.startswith(SYNTHETIC_BOARD) for board in log.boards)
        rows = featurize(log, _unit_points(settings.mekfile), settings.include_bots)
    except Exception as error:  # a file that cannot be read at all is reported, not fatal
        entry["problems"].append({"line": 0, "reason": f"unreadable: {type(error).__name__}: {error}"})
        return row_schema().empty_table(), entry
    entry["problems"] = [{"line": p.line, "reason": p.reason} | ({"file": p.file} if p.file != name else {})
                         for p in log.problems[:PROBLEMS_KEPT]]
    if len(log.problems) > PROBLEMS_KEPT:
        entry["more_problems"] = len(log.problems) - PROBLEMS_KEPT
    entry.update(rows=len(rows), moves=rows.moves_read, human_moves=rows.human_moves, dropped=rows.dropped)
    split = split_of(name, rows.segment, settings.seed, settings.test_size, settings.validation_size)
    columns = {
        "file": pa.array([name] * len(rows), pa.string()), "segment": rows.segment,
        "round": rows.round, "player_id": rows.player_id, "team_id": rows.team_id,
        "entity_id": rows.entity_id, "move_index": rows.move_index, "is_bot": rows.is_bot,
        "split": pa.array(split.tolist(), pa.string()),
    }
    features = pa.array(rows.features.astype(np.float32).ravel())
    columns["features"] = pa.FixedSizeListArray.from_arrays(features, rows.features.shape[1])
    columns["reward"] = rows.reward.astype(np.float32)
    return pa.Table.from_pydict(columns, schema=row_schema()), entry
