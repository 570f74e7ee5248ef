"""Reading MegaMek game logs: one file into typed tables, and the sources logs come from."""
from caspar.gamelog.reader import Board, GameLog, Problem, parse_hex, read_log

__all__ = ["Board", "GameLog", "Problem", "parse_hex", "read_log"]
