"""Reading MegaMek game logs: one file (or the four files of a split game) into typed tables."""
from caspar.data.gamelog.log import FORMATS, Board, GameLog, Problem, parse_hex
from caspar.data.gamelog.reader import read_game, read_log
from caspar.data.gamelog.split import split_part

__all__ = ["FORMATS", "Board", "GameLog", "Problem", "parse_hex", "read_game", "read_log", "split_part"]
