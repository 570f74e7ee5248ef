/*
 * CasparFeatures: the 354 features of a candidate move (feature set v1), as caspar-trainer computes them.
 * Copyright (C) 2026 the caspar-trainer authors
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * This program is free software: you can redistribute it and/or modify it under the terms of the
 * GNU General Public License as published by the Free Software Foundation, either version 3 of the
 * License, or (at your option) any later version. It is distributed in the hope that it will be
 * useful, but WITHOUT ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or FITNESS
 * FOR A PARTICULAR PURPOSE. See the GNU General Public License (the file LICENSE) for more details.
 */
package caspar;

import java.util.Arrays;
import java.util.List;

/**
 * The 354 raw feature values of one candidate move (feature set v1, FEATURES.md), computed from the
 * records MegaMek's dataset logger writes: the move's {@code UnitAction}, the {@code UnitState} of every
 * unit, and the board's size. caspar-trainer's Python computes the same values from game logs; a test
 * compares both on every row of the corpus.
 *
 * <pre>
 *   float[] raw = CasparFeatures.compute(action, mover, units, board.getWidth(), board.getHeight());
 *   float reward = model.predict(raw);       // CasparModel normalises the raw values itself
 * </pre>
 *
 * <p>A {@link Record} answers a logger field name ({@code "ID"}, {@code "TO_X"}, {@code "ROLE"}, ...) with
 * the value the logger would write: a {@link Number}, a {@link Boolean}, an enum or a string; null (or a
 * field it does not know) means missing. Fields read:
 * <ul>
 * <li>action: ID, TEAM_ID, PLAYER_ID, FACING, FROM_X, FROM_Y, TO_X, TO_Y, HEXES_MOVED, DISTANCE, MP_USED,
 *     MAX_MP, MP_P, HEAT_P, ARMOR_P, INTERNAL_P, JUMPING, PRONE, CHANCE_OF_FAILURE, ARMOR_FRONT_P,
 *     ARMOR_RIGHT_P, ARMOR_LEFT_P, ARMOR_BACK_P;</li>
 * <li>every unit (and the mover): ID, PLAYER_ID, TEAM_ID, TYPE, ROLE, X, Y, FACING, MP, HEAT, OFF_BOARD,
 *     DESTROYED, CRIPPLED, ARMOR_P, INTERNAL_P, MAX_RANGE, TOTAL_DAMAGE, ARMOR, INTERNAL, HAS_ECM and the
 *     four ARMOR_*_P arcs.</li>
 * </ul>
 * The mover's position is the action's TO_X, TO_Y; its own record supplies role, range, damage, hit points,
 * type, heat and flags (the state after the move: in a log, the snapshot that follows the move row). Units
 * whose ID is the mover's are skipped, so {@code units} may include the mover's own record.
 *
 * <p>Not thread-safe per call? It is: {@code compute} keeps no state.
 */
public final class CasparFeatures {
    /** The feature set these values belong to (schema.json's "version"); a model names the one it was trained on. */
    public static final String FEATURE_SET = "v1-6d7cc20410948256";
    /** Values per move. */
    public static final int WIDTH = 354;

    /** A record of the logger (UnitAction, UnitState, BoardData): a field name to its value, null if missing. */
    @FunctionalInterface
    public interface Record {
        Object get(String field);
    }

    static final String[] ROLES = {
        "UNDETERMINED", "NONE", "AMBUSHER", "BRAWLER", "JUGGERNAUT", "MISSILE_BOAT", "SCOUT", "SKIRMISHER",
        "SNIPER", "STRIKER", "ATTACK_FIGHTER", "DOGFIGHTER", "FAST_DOGFIGHTER", "FIRE_SUPPORT", "INTERCEPTOR",
        "TRANSPORT",
    };
    private static final int AMBUSHER = 2, BRAWLER = 3, JUGGERNAUT = 4, MISSILE_BOAT = 5, SCOUT = 6, SKIRMISHER = 7,
            SNIPER = 8, STRIKER = 9;
    private static final String[] ARCS = {"ARMOR_FRONT_P", "ARMOR_RIGHT_P", "ARMOR_LEFT_P", "ARMOR_BACK_P"};
    private static final int GRID = 10;
    private static final int SMOOTHING = 3;
    private static final int RADAR = 9;
    private static final int CONTROL_RADIUS = 7;
    // F24: weight of an enemy role (MISSILE_BOAT, SNIPER, STRIKER, SCOUT, JUGGERNAUT) for a mover role.
    private static final int[] FAVORITE_ROLES = {MISSILE_BOAT, SNIPER, STRIKER, SCOUT, JUGGERNAUT};
    private static final double[] FAVORITE_OF_SNIPER = {0.9, 0.9, 0.5, 0.5, 0.7};
    private static final double[] FAVORITE_OF_JUGGERNAUT = {0.9, 0.9, 0.5, 0.3, 1.0};
    private static final double[] FAVORITE_OF_STRIKER = {0.9, 0.9, 0.6, 0.5, 0.4};
    private static final double[] FAVORITE_OF_MISSILE_BOAT = {0.9, 0.9, 0.7, 0.6, 0.3};
    private static final double[] FAVORITE_OF_OTHERS = {0.9, 0.9, 0.5, 0.3, 0.7};

    private CasparFeatures() {
    }

    // --- Reading records ------------------------------------------------------------------------------

    /**
     * A field as a number: NaN when missing, not a number or not finite (as the log reader takes an
     * infinite value: missing); booleans are 1 and 0.
     */
    static double number(Record record, String field) {
        Object value = record.get(field);
        double number = Double.NaN;
        if (value instanceof Number n) {
            number = n.doubleValue();
        } else if (value instanceof Boolean b) {
            number = b ? 1.0 : 0.0;
        } else if (value instanceof CharSequence text) {
            try {
                number = Double.parseDouble(text.toString().trim().replace(',', '.'));
            } catch (NumberFormatException notANumber) {
                return Double.NaN;
            }
        }
        return Double.isFinite(number) ? number : Double.NaN;
    }

    /**
     * The values no rule can stand in for, checked before any feature is computed: the board's size,
     * the mover's HEAT, and every unit's hit points (ARMOR and INTERNAL). caspar-trainer estimates
     * missing hit points from its unit table and the game's history, which one call does not have, and
     * skips a logged move without the mover's heat; MegaMek's UnitState always has them.
     */
    private static void requireInputs(Record mover, List<? extends Record> units, int boardWidth, int boardHeight) {
        if (boardWidth < 1 || boardHeight < 1) {
            throw new IllegalArgumentException("the board is " + boardWidth + " x " + boardHeight
                    + " hexes: the features need its size (BoardData's width and height)");
        }
        require(mover, "HEAT", "the mover");
        requireHitPoints(mover, "the mover");
        for (Record unit : units) {
            requireHitPoints(unit, "unit " + integer(unit, "ID", -1));
        }
    }

    private static void requireHitPoints(Record unit, String who) {
        require(unit, "ARMOR", who);
        require(unit, "INTERNAL", who);
    }

    private static void require(Record record, String field, String who) {
        if (Double.isNaN(number(record, field))) {
            throw new IllegalArgumentException(who + "'s record has no finite " + field + " (" + record.get(field)
                    + "): the features need it (MegaMek's UnitState has it)");
        }
    }

    /** A field as text: an enum's name, a string as it is, "" when missing. */
    static String text(Record record, String field) {
        Object value = record.get(field);
        if (value instanceof Enum<?> e) {
            return e.name();
        }
        return value == null ? "" : value.toString();
    }

    /** An integer field as the logs read it: missing is `missing`, otherwise truncated towards zero. */
    private static long integer(Record record, String field, long missing) {
        double value = number(record, field);
        return Double.isFinite(value) ? (long) value : missing;
    }

    private static double orZero(double value) {
        return Double.isNaN(value) ? 0.0 : value;
    }

    static int roleCode(String role) {
        for (int i = 0; i < ROLES.length; i++) {
            if (ROLES[i].equals(role)) {
                return i;
            }
        }
        return -1;
    }

    /** Mean of the valid fractions (finite, in [0, 1]) of armour and internal structure; 1 if neither is. */
    static double health(double armorP, double internalP) {
        boolean validA = validFraction(armorP);
        boolean validI = validFraction(internalP);
        int count = (validA ? 1 : 0) + (validI ? 1 : 0);
        double total = (validA ? armorP : 0.0) + (validI ? internalP : 0.0);
        return count > 0 ? total / count : 1.0;
    }

    private static boolean validFraction(double v) {
        return Double.isFinite(v) && v >= 0 && v <= 1;
    }

    private static double clamp01(double v) {
        return Math.min(Math.max(v, 0.0), 1.0);  // NaN stays NaN, as numpy's clip
    }

    // --- The hex grid (FEATURES.md 2.3, 2.4) ----------------------------------------------------------------

    static long distance(long x1, long y1, long x2, long y2) {
        long q1 = x1, r1 = y1 - Math.floorDiv(x1 - Math.floorMod(x1, 2), 2);
        long q2 = x2, r2 = y2 - Math.floorDiv(x2 - Math.floorMod(x2, 2), 2);
        long dq = Math.abs(q1 - q2), dr = Math.abs(r1 - r2), ds = Math.abs((-q1 - r1) - (-q2 - r2));
        return Math.max(Math.max(dq, dr), ds);
    }

    private static double roundHalfAway(double v) {
        return Math.signum(v) * Math.floor(Math.abs(v) + 0.5);
    }

    /** The centroid hex of the selected units (FEATURES.md 2.3), as {x, y}. */
    private static long[] centroid(Unit[] units, boolean[] selected) {
        long sumQ = 0, sumR = 0, sumS = 0;
        int count = 0;
        for (int k = 0; k < units.length; k++) {
            if (selected[k]) {
                long q = units[k].x, r = units[k].y - Math.floorDiv(units[k].x - Math.floorMod(units[k].x, 2), 2);
                sumQ += q;
                sumR += r;
                sumS += -q - r;
                count++;
            }
        }
        int n = Math.max(count, 1);
        double qm = (double) sumQ / n, rm = (double) sumR / n, sm = (double) sumS / n;
        double qr = roundHalfAway(qm), rr = roundHalfAway(rm), sr = roundHalfAway(sm);
        double eq = Math.abs(qr - qm), er = Math.abs(rr - rm), es = Math.abs(sr - sm);
        if (eq > er && eq > es) {
            qr = -rr - sr;
        } else if (er > es) {
            rr = -qr - sr;
        }
        long q = (long) qr;
        return new long[] {q, (long) rr + Math.floorDiv(q - Math.floorMod(q, 2), 2)};
    }

    /** MegaMek direction (0 north, clockwise) from point a to point b, points as (x, y + (x mod 2) / 2); -1 if they coincide. */
    private static int direction(double ax, double ay, double bx, double by) {
        double dx = (bx - ax) * (Math.sqrt(3.0) / 2.0);
        double dy = by - ay;
        if (dx == 0 && dy == 0) {
            return -1;
        }
        double theta = Math.atan2(dx, -dy);
        if (theta < 0) {
            theta += 2 * Math.PI;
        }
        return (int) Math.floorMod((long) Math.floor(3 * theta / Math.PI + 0.5 + 1e-9), 6L);
    }

    private static double pointY(long x, long y) {
        return y + Math.floorMod(x, 2) / 2.0;
    }

    private static long facingDifference(long a, long b) {
        long diff = Math.abs(a - b);
        return Math.min(diff, 6 - diff);
    }

    // --- One decision -----------------------------------------------------------------------------------

    /** What the features read of a unit's state record. */
    private static final class Unit {
        final long id, player, team, x, y, facing;
        final double mp, heat, maxRange, totalDamage, hp, health;
        final boolean offBoard, destroyed, crippled, hasEcm;
        final int role;
        final String type;
        final double[] arcs = new double[4];

        Unit(Record r) {
            id = integer(r, "ID", -1);
            player = integer(r, "PLAYER_ID", -1);
            team = integer(r, "TEAM_ID", -1);
            x = integer(r, "X", -1);
            y = integer(r, "Y", -1);
            facing = integer(r, "FACING", 0);
            mp = number(r, "MP");
            heat = number(r, "HEAT");
            maxRange = orZero(number(r, "MAX_RANGE"));
            totalDamage = orZero(number(r, "TOTAL_DAMAGE"));
            hp = number(r, "ARMOR") + number(r, "INTERNAL");
            health = health(number(r, "ARMOR_P"), number(r, "INTERNAL_P"));
            offBoard = number(r, "OFF_BOARD") == 1;
            destroyed = number(r, "DESTROYED") == 1;
            crippled = number(r, "CRIPPLED") == 1;
            hasEcm = number(r, "HAS_ECM") == 1;
            role = roleCode(text(r, "ROLE"));
            type = text(r, "TYPE");
            for (int a = 0; a < 4; a++) {
                arcs[a] = number(r, ARCS[a]);
            }
        }
    }

    /**
     * The 354 raw features of a move.
     *
     * @param action the move (UnitAction.fromMovePath of the candidate path)
     * @param mover  the moving unit's state record (its UnitState)
     * @param units  every unit's state record (UnitState of each unit of the game; the mover's is skipped)
     * @param boardWidth  the board's width in hexes
     * @param boardHeight the board's height in hexes
     * @return a new array of {@link #WIDTH} values in schema order, every one finite
     * @throws IllegalArgumentException naming the record and field, if the board's size, the mover's HEAT or a
     *         unit's ARMOR or INTERNAL is missing or not finite (a value with a rule of its own, such as a
     *         missing MAX_RANGE, falls back as caspar-trainer's features do)
     */
    public static float[] compute(Record action, Record mover, List<? extends Record> units, int boardWidth,
                                  int boardHeight) {
        requireInputs(mover, units, boardWidth, boardHeight);
        Unit[] all = new Unit[units.size()];
        for (int k = 0; k < all.length; k++) {
            all[k] = new Unit(units.get(k));
        }
        double[] values = new Decision(action, new Unit(mover), all, boardWidth, boardHeight).values();
        float[] out = new float[WIDTH];
        for (int i = 0; i < WIDTH; i++) {
            out[i] = (float) values[i];
            if (!Float.isFinite(out[i])) {  // never NaN into a model: every rule has a finite value
                throw new IllegalArgumentException("feature " + i + " is " + out[i] + " for these records");
            }
        }
        return out;
    }

    /** A move with its unit sets (FEATURES.md 2.2) and shared quantities (2.5, 2.8). */
    private static final class Decision {
        final Unit me;
        final Unit[] u;
        final long width, height;
        final long px, py, p0x, p0y, facing, entity, player, team;
        final double hexesMoved, distance, mpUsed, maxMp, mpP, heatP, armorP, internalP, chanceOfFailure, hM, tau;
        final boolean jumping, prone;
        final double[] arcHealth = new double[4];
        final double range, damage, hp;
        final int role;
        final boolean[] enemies, mates, own;
        final long[] d;
        final int closest, closestTarget;  // slots of c and c* in u, -1 if none
        final double dC, dCStar;

        Decision(Record a, Unit me, Unit[] units, int boardWidth, int boardHeight) {
            this.me = me;
            this.u = units;
            width = boardWidth;
            height = boardHeight;
            px = integer(a, "TO_X", -1);
            py = integer(a, "TO_Y", -1);
            p0x = integer(a, "FROM_X", -1);
            p0y = integer(a, "FROM_Y", -1);
            facing = integer(a, "FACING", 0);
            entity = integer(a, "ID", -1);
            player = integer(a, "PLAYER_ID", -1);
            double teamField = number(a, "TEAM_ID");
            team = Double.isFinite(teamField) ? (long) teamField : me.team;
            hexesMoved = orZero(number(a, "HEXES_MOVED"));
            distance = orZero(number(a, "DISTANCE"));
            mpUsed = orZero(number(a, "MP_USED"));
            maxMp = orZero(number(a, "MAX_MP"));
            mpP = orZero(number(a, "MP_P"));
            heatP = orZero(number(a, "HEAT_P"));
            armorP = number(a, "ARMOR_P");
            internalP = number(a, "INTERNAL_P");
            jumping = number(a, "JUMPING") == 1;
            prone = number(a, "PRONE") == 1;
            chanceOfFailure = orZero(number(a, "CHANCE_OF_FAILURE"));
            hM = health(armorP, internalP);
            for (int i = 0; i < 4; i++) {  // the move row's arc, else the mover's state's, else h_M
                double fromMove = number(a, ARCS[i]);
                arcHealth[i] = validFraction(fromMove) ? fromMove : validFraction(me.arcs[i]) ? me.arcs[i] : hM;
            }
            range = me.maxRange;
            damage = me.totalDamage;
            hp = me.hp;
            role = me.role;

            int n = units.length;
            enemies = new boolean[n];
            mates = new boolean[n];
            own = new boolean[n];
            d = new long[n];
            for (int k = 0; k < n; k++) {
                Unit v = units[k];
                boolean eligible = v.id != entity && v.x >= 0 && v.x < width && v.y >= 0 && v.y < height
                        && !v.offBoard && !v.destroyed;
                enemies[k] = eligible && v.team != team;
                mates[k] = eligible && v.team == team;
                own[k] = eligible && v.player == player;
                d[k] = distance(px, py, v.x, v.y);
            }
            closest = firstNearest(enemies, false);
            closestTarget = firstNearest(enemies, true);
            dC = closest >= 0 ? d[closest] : Double.POSITIVE_INFINITY;
            dCStar = closestTarget >= 0 ? d[closestTarget] : Double.POSITIVE_INFINITY;
            int bins = 0;
            for (int threshold : new int[] {3, 5, 7, 10, 18, 25}) {
                bins += hexesMoved >= threshold ? 1 : 0;
            }
            double t = bins + (jumping ? 1 : 0) - 2.0 * (prone ? 1 : 0) - 4.0 * (hexesMoved == 0 ? 1 : 0);
            tau = clamp01(t / 7.0);
        }

        private int firstNearest(boolean[] set, boolean withHitPoints) {
            int best = -1;
            for (int k = 0; k < u.length; k++) {
                if (set[k] && (!withHitPoints || u[k].hp > 0) && (best < 0 || d[k] < d[best])) {
                    best = k;
                }
            }
            return best;
        }

        private boolean any(boolean[] set) {
            for (boolean b : set) {
                if (b) {
                    return true;
                }
            }
            return false;
        }

        private int count(boolean[] set, java.util.function.IntPredicate also) {
            int c = 0;
            for (int k = 0; k < set.length; k++) {
                if (set[k] && also.test(k)) {
                    c++;
                }
            }
            return c;
        }

        private double matesCentroidDistance() {
            long[] c = centroid(u, mates);
            return distance(px, py, c[0], c[1]);
        }

        double[] values() {
            double[] f = new double[WIDTH];
            boolean anyEnemy = any(enemies), anyMate = any(mates), anyOwn = any(own);
            double matesDelta = anyMate ? matesCentroidDistance() : 0.0;
            f[0] = clamp01(mpP);
            f[1] = clamp01(heatP);
            f[2] = validFraction(armorP) ? armorP : 0.0;
            f[3] = validFraction(internalP) ? internalP : 1.0;
            f[4] = jumping ? 1 : 0;
            f[5] = maxMp == 0 ? 0.0 : clamp01(distance / maxMp);
            f[6] = maxMp == 0 ? 0.0 : clamp01(hexesMoved / maxMp);
            f[7] = isFacingEnemy();
            f[8] = range > 0 && anyEnemy ? clamp01(1.0 - dC / range) : 0.0;
            f[9] = coverValue();
            f[10] = Math.min(count(mates, k -> d[k] <= 8) / 6.0, 1.0);
            f[11] = clamp01(count(enemies, k -> d[k] <= 10) / 8.0);
            f[12] = anyMate ? clamp01(1.0 - matesDelta / 20.0) : 1.0;
            f[13] = hM;
            for (int i = 0; i < 4; i++) {
                f[14 + i] = arcHealth[i];
            }
            f[18] = clamp01(0.7 * (count(enemies, k -> d[k] < 8) / 2.0) + 0.3 * (count(mates, k -> d[k] < 4) / 3.0));
            f[19] = damageRatio();
            f[20] = me.hasEcm ? 1.0 / (count(mates, k -> u[k].hasEcm && d[k] <= 6) + 1) : 0.0;
            f[21] = 1.0 / (count(enemies, k -> u[k].hasEcm && d[k] <= 6) + 1);
            f[22] = dC < 7 ? 0.8 : dC < 12 ? 0.6 : dC < 24 ? 0.4 : 0.2;
            f[23] = environmentalHazards();
            f[24] = favoriteTargetInRange();
            f[25] = flankingPosition();
            f[26] = formationCohesion(anyMate, matesDelta, anyOwn);
            f[27] = formationSeparation(anyMate);
            f[28] = formationAlignment(anyMate);
            f[29] = friendlyArtilleryFire();
            f[30] = clamp01(count(mates, k -> d[k] <= u[k].maxRange) / 5.0);
            double heatShare = me.type.contains("Mek") ? me.heat / 40.0 : me.heat / 999.0;
            f[31] = clamp01(1.0 - heatShare);
            f[32] = enemyVipDistance();
            f[33] = me.crippled ? 1 : 0;
            f[34] = movingTowardWaypoint(anyEnemy);
            f[35] = unitRole(f[19]);
            f[36] = threatBy(SNIPER);
            f[37] = threatBy(MISSILE_BOAT);
            f[38] = threatBy(JUGGERNAUT);
            f[39] = tau;
            f[40] = clamp01(Math.max(chanceOfFailure, f[23]));
            f[41] = clamp01((1.0 - hM) / Math.max(1.0, dC / 3.0));
            f[42] = scouting(anyMate, matesDelta);
            f[43] = hexesMoved == 0 ? 1 : 0;
            f[44] = strategicGoal();
            f[45] = closest >= 0 ? u[closest].health : 0.5;
            f[46] = targetWithinOptimalRange(anyEnemy);
            f[47] = turnsToEncounter();
            f[48] = clamp01(chanceOfFailure);
            f[49] = selfThreatLevel();
            if (role >= 0) {
                f[50 + role] = 1;
            }
            heatmap(f, 66, false);
            heatmap(f, 166, true);
            closestEnemies(f, 266);
            closestFriends(f, 270);
            radar(f, 273);
            return f;
        }

        // --- Scalar features (FEATURES.md 4) ---

        private double isFacingEnemy() {
            double sumX = 0, sumY = 0;
            int count = 0;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k] && d[k] <= u[k].maxRange) {
                    sumX += u[k].x;
                    sumY += pointY(u[k].x, u[k].y);
                    count++;
                }
            }
            long ideal = facing;
            if (count > 0) {
                int toward = direction(px, pointY(px, py), sumX / count, sumY / count);
                ideal = toward >= 0 ? toward : facing;
            }
            return 1.0 - facingDifference(facing, ideal) / 3.0;
        }

        private double coverValue() {
            double base = dC > 20 ? 0.3 : dC > 12 ? 0.6 : 0.9;
            boolean exposedRole = role == SNIPER || role == MISSILE_BOAT || role == SCOUT || role == STRIKER;
            base = base * (exposedRole ? 1.2 : 1.0);
            base = base * (jumping ? 0.7 : 1.0) * (prone ? 1.2 : 1.0);
            return clamp01(base);
        }

        private double damageRatio() {
            double best = Double.NEGATIVE_INFINITY;
            boolean found = false;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k] && d[k] <= range && u[k].hp > 0) {
                    best = found ? Math.max(best, damage / u[k].hp) : damage / u[k].hp;
                    found = true;
                }
            }
            return clamp01(Math.max(0.0, found ? best : 0.0));
        }

        private double environmentalHazards() {
            double z = mpUsed > hexesMoved ? 0.3 * mpP : 0.0;
            return clamp01(jumping ? z / 2.0 : z);
        }

        private double favoriteTargetInRange() {
            if (!(range > 0)) {
                return 0.0;
            }
            double[] weights = switch (role) {
                case SNIPER -> FAVORITE_OF_SNIPER;
                case JUGGERNAUT -> FAVORITE_OF_JUGGERNAUT;
                case STRIKER -> FAVORITE_OF_STRIKER;
                case MISSILE_BOAT -> FAVORITE_OF_MISSILE_BOAT;
                default -> FAVORITE_OF_OTHERS;
            };
            double best = 0.0;
            boolean found = false;
            for (int k = 0; k < u.length; k++) {
                int column = indexOf(FAVORITE_ROLES, u[k].role);
                if (enemies[k] && column >= 0 && d[k] <= range) {
                    double score = weights[column] * (1.0 - d[k] / range);
                    best = found ? Math.max(best, score) : score;
                    found = true;
                }
            }
            return clamp01(Math.max(0.0, found ? best : 0.0));
        }

        private double flankingPosition() {
            double best = 0.0;
            boolean found = false;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k] && d[k] > 0 && d[k] <= 12) {
                    int toward = direction(u[k].x, pointY(u[k].x, u[k].y), px, pointY(px, py));
                    long delta = facingDifference(toward, u[k].facing);
                    double zone = delta <= 1 ? 0.2 : delta == 2 ? 0.75 : 1.0;
                    double score = zone * clamp01(1.0 - d[k] / 12.0);
                    best = found ? Math.max(best, score) : score;
                    found = true;
                }
            }
            return Math.max(0.0, found ? best : 0.0);
        }

        private double formationCohesion(boolean anyMate, double matesDelta, boolean anyOwn) {
            double cohesion = anyMate ? Math.max(0.0, 1.0 - matesDelta / 15.0) : 1.0;
            long[] nearest = new long[u.length];
            int n = 0;
            for (int k = 0; k < u.length; k++) {
                if (own[k]) {
                    nearest[n++] = d[k];
                }
            }
            Arrays.sort(nearest, 0, n);
            int taken = Math.min(n, 4);
            double sum = 0;
            int good = 0;
            for (int i = 0; i < taken; i++) {
                double dd = nearest[i];
                sum += dd < 1 ? 0.0 : dd < 3 ? 0.7 : dd <= 4 ? 1.0 : Math.max(0.0, 1.0 - (dd - 4) / 3.0);
                good += dd >= 1 && dd <= 4 ? 1 : 0;
            }
            double meanQ = sum / Math.max(taken, 1);
            double pattern = anyOwn ? clamp01(meanQ + 0.2 * clamp01(good / 4.0)) : 0.5;
            return 0.6 * cohesion + 0.4 * pattern;
        }

        private double formationSeparation(boolean anyMate) {
            long nearest = Long.MAX_VALUE;
            for (int k = 0; k < u.length; k++) {
                if (mates[k]) {
                    nearest = Math.min(nearest, d[k]);
                }
            }
            return anyMate && nearest < 2 ? nearest / 2.0 : 1.0;
        }

        private double formationAlignment(boolean anyMate) {
            if (!anyMate) {
                return 0.5;
            }
            int[] counts = new int[6];
            int[] firstSeen = new int[6];
            Arrays.fill(firstSeen, Integer.MAX_VALUE);
            for (int k = 0; k < u.length; k++) {
                if (mates[k] && u[k].facing >= 0 && u[k].facing < 6) {
                    int f = (int) u[k].facing;
                    counts[f]++;
                    firstSeen[f] = Math.min(firstSeen[f], k);
                }
            }
            int most = Arrays.stream(counts).max().orElse(0);
            int leader = 0;
            int leaderSeen = Integer.MAX_VALUE;
            for (int f = 0; f < 6; f++) {  // the most frequent facing; ties: the one seen first
                if (counts[f] == most && firstSeen[f] < leaderSeen) {
                    leader = f;
                    leaderSeen = firstSeen[f];
                }
            }
            return 0.4 * (1.0 - facingDifference(facing, leader) / 3.0) + 0.36;
        }

        private double friendlyArtilleryFire() {
            double best = 0.0;
            boolean found = false;
            for (int k = 0; k < u.length; k++) {
                if (mates[k] && u[k].maxRange >= 22 && d[k] <= 17) {
                    best = found ? Math.max(best, u[k].maxRange - 17.0) : u[k].maxRange - 17.0;
                    found = true;
                }
            }
            return clamp01((found ? best : 0.0) / (Math.max(range, 0.0) + 1.0));
        }

        private double enemyVipDistance() {
            long nearest = Long.MAX_VALUE;
            boolean found = false;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k] && u[k].totalDamage > 60) {
                    nearest = Math.min(nearest, d[k]);
                    found = true;
                }
            }
            return found && range > 0 ? clamp01(1.0 - nearest / range) : 0.0;
        }

        private double movingTowardWaypoint(boolean anyEnemy) {
            if (!anyEnemy) {
                return 0.0;
            }
            long[] c = centroid(u, enemies);
            return distance(px, py, c[0], c[1]) < distance(p0x, p0y, c[0], c[1]) ? 1.0 : 0.0;
        }

        private double unitRole(double damageRatio) {
            double r = range;
            boolean noEnemy = closest < 0;
            double dd = noEnemy ? 0.0 : dC;
            int threatening = count(enemies, k -> d[k] <= u[k].maxRange);
            double score = switch (role) {
                case SNIPER -> noEnemy || !(r > 0) ? 0.0 : 1.0 - Math.abs(dd - 0.7 * r) / (0.3 * r);
                case STRIKER -> noEnemy ? 0.0 : 1.0 - dd / 10.0;
                case JUGGERNAUT -> noEnemy ? 0.0 : 1.0 - dd / 7.0;
                case MISSILE_BOAT -> noEnemy || !(r > 0) ? 0.0 : 1.0 - Math.abs(dd - r) / r;
                case SCOUT -> tau / (threatening + 1);
                case BRAWLER -> 3.0 / (threatening + 1);
                case SKIRMISHER -> 0.6 * tau + 0.4 * damageRatio;
                case AMBUSHER -> 0.7 / (threatening + 1) + 0.3 * (r > 0 ? clamp01(1.0 - dC / Math.min(7.0, r)) : 0.0);
                default -> 0.5;
            };
            return clamp01(score);
        }

        private double threatBy(int threatRole) {
            double sum = 0.0;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k] && u[k].role == threatRole && u[k].maxRange > 0 && d[k] <= u[k].maxRange) {
                    sum += clamp01(u[k].totalDamage / Math.max(hp, 1.0)) * (1.0 - d[k] / u[k].maxRange);
                }
            }
            return clamp01(sum);
        }

        private double scouting(boolean anyMate, double matesDelta) {
            double spread = anyMate ? matesDelta : 0.0;
            double value = 0.4 * (role == SCOUT ? 1 : 0) + 0.3 * (maxMp >= 8 ? 1 : 0)
                    + 0.2 * Math.min(hexesMoved / Math.max(1.0, maxMp), 1.0) + 0.1 * Math.min(spread / 15.0, 1.0);
            return clamp01(value);
        }

        /** F44: board control gained and enemy control disputed; only the disks around P and P0 can change. */
        private double strategicGoal() {
            int[] atP = newlyControlled(px, py);
            int[] atP0 = newlyControlled(p0x, p0y);
            double n = (double) (width * height);
            double gained = (atP[0] - atP0[0]) / n;
            double disputed = (atP0[1] - atP[1]) / n;
            return clamp01(0.7 * clamp01(gained + 0.5) + 0.3 * clamp01(disputed + 0.5));
        }

        /** {hexes of the board within 7 of (cx, cy) no team mate controls, of those the hexes an enemy controls}. */
        private int[] newlyControlled(long cx, long cy) {
            int fresh = 0, contested = 0;
            if (cx < 0 || cx >= width || cy < 0 || cy >= height) {
                return new int[] {0, 0};
            }
            long q0 = cx, r0 = cy - Math.floorDiv(cx - Math.floorMod(cx, 2), 2);
            for (int dq = -CONTROL_RADIUS; dq <= CONTROL_RADIUS; dq++) {
                for (int dr = -CONTROL_RADIUS; dr <= CONTROL_RADIUS; dr++) {
                    if (Math.max(Math.max(Math.abs(dq), Math.abs(dr)), Math.abs(dq + dr)) > CONTROL_RADIUS) {
                        continue;
                    }
                    long x = q0 + dq;
                    long y = r0 + dr + Math.floorDiv(x - Math.floorMod(x, 2), 2);
                    if (x < 0 || x >= width || y < 0 || y >= height || controlled(mates, x, y)) {
                        continue;
                    }
                    fresh++;
                    contested += controlled(enemies, x, y) ? 1 : 0;
                }
            }
            return new int[] {fresh, contested};
        }

        private boolean controlled(boolean[] set, long x, long y) {
            for (int k = 0; k < u.length; k++) {
                if (set[k] && distance(x, y, u[k].x, u[k].y) <= CONTROL_RADIUS) {
                    return true;
                }
            }
            return false;
        }

        private double targetWithinOptimalRange(boolean anyEnemy) {
            if (!(range > 0) || !anyEnemy) {
                return 0.0;
            }
            long r = (long) range;
            long low = Math.floorDiv(7 * r, 10);
            int inside = count(enemies, k -> d[k] >= low && d[k] <= r);
            return (double) inside / count(enemies, k -> true);
        }

        private double turnsToEncounter() {
            if (closest < 0 || !(u[closest].mp > 0)) {
                return 0.0;
            }
            return clamp01(1.0 - (dC / u[closest].mp) / 5.0);
        }

        private double selfThreatLevel() {
            if (closestTarget < 0) {
                return 0.0;
            }
            Unit target = u[closestTarget];
            double a = dCStar <= Math.max(range, 1.0) ? 1.0 : 0.6;
            double b = dCStar <= Math.max(target.maxRange, 1.0) ? 0.8 : 1.0;
            return clamp01(damage / (target.hp > 0 ? target.hp : 1.0) * a * b);
        }

        // --- Blocks (FEATURES.md 5) ---

        /** A 10 x 10 map of the board: the largest range per cell, smoothed, scaled to unit norm. */
        private void heatmap(double[] f, int offset, boolean friendly) {
            double[] raw = new double[GRID * GRID];
            for (int k = 0; k < u.length; k++) {
                if (friendly ? mates[k] : enemies[k]) {
                    bin(raw, u[k].x, u[k].y, u[k].maxRange);
                }
            }
            if (friendly && px >= 0 && px < width && py >= 0 && py < height) {
                bin(raw, px, py, range);
            }
            double[] out = raw.clone();
            for (int cy = 0; cy < GRID; cy++) {
                for (int cx = 0; cx < GRID; cx++) {
                    double v = raw[cy * GRID + cx];
                    if (!(v > 0)) {
                        continue;
                    }
                    for (int dy = -SMOOTHING; dy <= SMOOTHING; dy++) {
                        for (int dx = -SMOOTHING; dx <= SMOOTHING; dx++) {
                            int nx = cx + dx, ny = cy + dy;
                            double e = Math.hypot(dx, dy);
                            if ((dx != 0 || dy != 0) && e <= SMOOTHING && nx >= 0 && nx < GRID && ny >= 0 && ny < GRID) {
                                out[ny * GRID + nx] = Math.max(out[ny * GRID + nx], v / (1.0 + e));
                            }
                        }
                    }
                }
            }
            double squares = 0;
            for (double v : out) {
                squares += v * v;
            }
            double norm = Math.sqrt(squares);
            for (int i = 0; i < out.length; i++) {
                f[offset + i] = norm > 0 ? out[i] / norm : 0.0;
            }
        }

        private void bin(double[] raw, long x, long y, double value) {
            int gx = (int) Math.floorDiv(GRID * x, width);
            int gy = (int) Math.floorDiv(GRID * y, height);
            raw[gy * GRID + gx] = Math.max(raw[gy * GRID + gx], value);
        }

        /** The four largest per-enemy threats to the mover, largest first, 0 for missing enemies. */
        private void closestEnemies(double[] f, int offset) {
            double[] threats = new double[u.length];
            int n = 0;
            for (int k = 0; k < u.length; k++) {
                if (enemies[k]) {
                    double a = d[k] <= Math.max(range, 1.0) ? 0.8 : 1.0;
                    double b = d[k] <= Math.max(u[k].maxRange, 1.0) ? 1.0 : 0.5;
                    threats[n++] = clamp01(u[k].totalDamage / Math.max(hp, 1.0) * (1.0 - 0.7 * tau) * a * b);
                }
            }
            top(threats, n, f, offset, 4);
        }

        /** The three largest supports of team mates against the closest valid target (all 0 without one). */
        private void closestFriends(double[] f, int offset) {
            if (closestTarget < 0) {
                return;
            }
            double targetHp = u[closestTarget].hp;
            double[] support = new double[u.length];
            int n = 0;
            for (int k = 0; k < u.length; k++) {
                if (mates[k]) {
                    double b = d[k] <= Math.max(u[k].maxRange, 1.0) ? 1.0 : 0.5;
                    support[n++] = clamp01(u[k].totalDamage / (targetHp > 0 ? targetHp : 1.0) * b);
                }
            }
            top(support, n, f, offset, 3);
        }

        private static void top(double[] values, int n, double[] f, int offset, int slots) {
            double[] sorted = Arrays.copyOf(values, n);
            Arrays.sort(sorted);
            for (int i = 0; i < slots && i < n; i++) {
                f[offset + i] = sorted[n - 1 - i];
            }
        }

        /** 9 x 9 window centred on the mover: 3 at the centre, -1 where an enemy maps, else +1 for a team mate. */
        private void radar(double[] f, int offset) {
            int centre = RADAR / 2;
            int[] cells = new int[RADAR * RADAR];
            for (int k = 0; k < u.length; k++) {
                if (!mates[k] && !enemies[k]) {
                    continue;
                }
                long dx = u[k].x - px;
                long dy = (u[k].y - py) + (Math.floorMod(px, 2) == 0 && Math.floorMod(u[k].x, 2) == 1 ? 1 : 0);
                long reach = Math.max(Math.abs(dx), Math.abs(dy));
                long row, col;
                if (reach <= centre) {
                    row = centre + dy;
                    col = centre + dx;
                } else {
                    double scale = (double) centre / reach;
                    row = centre + (long) roundHalfAway(dy * scale);
                    col = centre + (long) roundHalfAway(dx * scale);
                }
                int cell = (int) (row * RADAR + col);
                cells[cell] = enemies[k] ? -1 : cells[cell] == -1 ? -1 : 1;
            }
            cells[centre * RADAR + centre] = 3;
            for (int i = 0; i < cells.length; i++) {
                f[offset + i] = cells[i];
            }
        }
    }

    private static int indexOf(int[] values, int value) {
        for (int i = 0; i < values.length; i++) {
            if (values[i] == value) {
                return i;
            }
        }
        return -1;
    }
}
