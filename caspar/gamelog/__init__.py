"""Reading MegaMek game logs: one file into typed tables, and the sources logs come from."""
from caspar.gamelog.reader import FORMATS, Board, GameLog, Problem, parse_hex, read_game, read_log, split_part

__all__ = ["FORMATS", "Board", "GameLog", "Problem", "parse_hex", "read_game", "read_log", "split_part"]
