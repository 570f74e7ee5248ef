"""MegaMek's hex grid (FEATURES.md §2.3, §2.4): columns x, rows y, odd columns half a hex down.

Every function takes numpy arrays (any broadcastable shapes) of integer offset coordinates.
"""
from __future__ import annotations

import numpy as np


def to_cube(x, y):
    """A hex's cube coordinates; parity is x mod 2, so -1 counts as odd.

    Args:
        x: offset column, array or number.
        y: offset row.

    Returns:
        (q, r, s), each shaped as x.
    """
    q = x
    r = y - (x - (x % 2)) // 2
    return q, r, -q - r


def distance(x1, y1, x2, y2):
    """Hex distance between (x1, y1) and (x2, y2), element-wise.

    Args:
        x1: first hex's column.
        y1: its row.
        x2: second hex's column.
        y2: its row.

    Returns:
        The distance in hexes, broadcast shape.
    """
    q1, r1, s1 = to_cube(x1, y1)
    q2, r2, s2 = to_cube(x2, y2)
    return np.maximum(np.maximum(np.abs(q1 - q2), np.abs(r1 - r2)), np.abs(s1 - s2))


def round_half_away(v):
    """Rounds halves away from zero (cube coordinates of a centroid).

    Args:
        v: values.

    Returns:
        The rounded values, float.
    """
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def centroid(x, y, mask):
    """Centroid hex of the units selected by `mask` along the last axis; (x, y) per leading index.
    Rows with an empty mask give (0, 0); callers handle the empty case themselves.

    Args:
        x: [..., K] columns.
        y: [..., K] rows.
        mask: [..., K] bool, the units counted.

    Returns:
        (x, y) of the centroid hex, [...] each.
    """
    q, r, s = to_cube(x, y)
    count = np.maximum(mask.sum(-1), 1)
    qm, rm, sm = ((np.where(mask, c, 0).sum(-1)) / count for c in (q, r, s))
    qr, rr, sr = round_half_away(qm), round_half_away(rm), round_half_away(sm)
    eq, er, es = np.abs(qr - qm), np.abs(rr - rm), np.abs(sr - sm)
    fix_q = (eq > er) & (eq > es)
    fix_r = ~fix_q & (er > es)
    qr = np.where(fix_q, -rr - sr, qr)
    rr = np.where(fix_r, -qr - sr, rr)
    q_out = qr.astype(np.int64)
    return q_out, (rr + (q_out - (q_out % 2)) // 2).astype(np.int64)


def point(x, y):
    """A hex as a point, for directions.

    Args:
        x: columns (array).
        y: rows.

    Returns:
        (x, y') with y' = y + (x mod 2) / 2, float.
    """
    return x.astype(np.float64), y + (x % 2) / 2.0


def direction(ax, ay, bx, by):
    """MegaMek direction (0 = north, clockwise) from point a to point b, both (x, y') points.
    Args:
        ax: a's x.
        ay: a's y'.
        bx: b's x.
        by: b's y'.

    Returns:
        (direction 0-5, defined): undefined where the points coincide.
    """
    dx = (bx - ax) * (np.sqrt(3.0) / 2.0)
    dy = by - ay
    theta = np.arctan2(dx, -dy) % (2 * np.pi)
    result = np.floor(3 * theta / np.pi + 0.5 + 1e-9).astype(np.int64) % 6
    return result, (dx != 0) | (dy != 0)


def facing_difference(a, b):
    """How far apart two facings are.

    Args:
        a: facings 0-5.
        b: facings 0-5.

    Returns:
        0-3 hex sides.
    """
    diff = np.abs(a - b)
    return np.minimum(diff, 6 - diff)
