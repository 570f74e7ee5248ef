/*
 * CasparTool: the command line of caspar-trainer's Java model and features.
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

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The command line (MegaMek needs only CasparModel and CasparFeatures; this class checks them):
 * <pre>
 *   predict EXPORT_FOLDER &lt; rows.csv        one prediction per row of comma-separated raw features
 *   features DECISIONS OUT.f32               the 354 features of every decision, float32 little-endian
 *   score EXPORT_FOLDER DECISIONS OUT.f32     the model's prediction from the Java features of every decision
 *   benchmark EXPORT_FOLDER [DECISIONS]       median milliseconds per call on this thread, at batch 1
 * </pre>
 * A decisions file (written by caspar-trainer's {@code caspar.javafeatures}) holds the records of moves of
 * real games with the logger's field names. Bad input: one line on standard error and exit status 2.
 */
public final class CasparTool {
    private CasparTool() {
    }

    public static void main(String[] args) {
        try {
            run(args);
        } catch (UsageException error) {
            System.err.println("CasparTool: " + error.getMessage());
            System.exit(2);
        } catch (IOException error) {
            System.err.println("CasparTool: " + error.getMessage());
            System.exit(2);
        }
    }

    private static final class UsageException extends Exception {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }

    private static void run(String[] args) throws IOException, UsageException {
        String command = args.length > 0 ? args[0] : "";
        int needed = switch (command) {
            case "predict" -> 2;
            case "features" -> 3;
            case "score" -> 4;
            case "benchmark" -> 2;
            default -> throw new UsageException("usage: CasparTool predict|features|score|benchmark ... (see its class comment)");
        };
        if (args.length < needed || args.length > needed + (command.equals("benchmark") ? 1 : 0)) {
            throw new UsageException(command + ": wrong number of arguments (see CasparTool's class comment)");
        }
        switch (command) {
            case "predict" -> predict(CasparModel.load(Path.of(args[1])));
            case "features" -> {
                List<Decision> decisions = readDecisions(Path.of(args[1]));
                float[][] rows = new float[decisions.size()][];
                for (int i = 0; i < rows.length; i++) {
                    rows[i] = featuresOf(decisions.get(i), args[1]);
                }
                writeFloats(Path.of(args[2]), rows);
            }
            case "score" -> {
                CasparModel model = CasparModel.load(Path.of(args[1]));
                List<Decision> decisions = readDecisions(Path.of(args[2]));
                float[][] scores = new float[decisions.size()][1];
                for (int i = 0; i < scores.length; i++) {
                    scores[i][0] = model.predict(featuresOf(decisions.get(i), args[2]));
                }
                writeFloats(Path.of(args[3]), scores);
            }
            default -> benchmark(CasparModel.load(Path.of(args[1])), Path.of(args[1]),
                    args.length > 2 ? readDecisions(Path.of(args[2])) : List.of());
        }
    }

    /**
     * Rows of comma-separated raw feature values on standard input (a first line of names is a header:
     * test_inputs.csv's, the schema's feature names, which then name the features in messages).
     */
    private static void predict(CasparModel model) throws IOException, UsageException {
        BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        BufferedWriter out = new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8));
        int number = 0;
        String[] names = new String[0];
        try {  // the rows before a bad one keep their predictions: written out before the one line on it
            for (String line = reader.readLine(); line != null; line = reader.readLine()) {
                number++;
                if (number == 1 && isHeader(line)) {
                    names = line.split(",", -1);
                    continue;
                }
                if (line.isBlank()) {
                    continue;
                }
                String[] cells = line.split(",", -1);
                // the features, and at most one more value: test_inputs.csv's expected output, read past
                if (cells.length < model.inputWidth() || cells.length > model.inputWidth() + 1) {
                    throw new UsageException("line " + number + ": " + cells.length + " comma-separated values, the model takes "
                            + model.inputWidth() + " (and test_inputs.csv's expected output after them)");
                }
                float[] row = new float[model.inputWidth()];
                for (int i = 0; i < row.length; i++) {
                    row[i] = parseValue(cells[i], number, i);
                    if (!Float.isFinite(row[i])) {  // as the model itself refuses it: named here by its column
                        throw new UsageException("line " + number + ": " + columnName(names, i) + " is " + row[i]
                                + ": the model takes finite raw values");
                    }
                }
                out.write(Float.toString(model.predict(row)));
                out.write('\n');
            }
        } finally {
            out.flush();
        }
        reportOutsideTrainingRange(model, names);
    }

    /**
     * One line on standard error when inputs left the training rows' range: the features, most values
     * first, by the input's column names where it had a header (and by their column, from 0).
     */
    private static void reportOutsideTrainingRange(CasparModel model, String[] names) {
        long[] counts = model.outsideTrainingRange();
        List<Integer> features = new ArrayList<>();
        for (int i = 0; i < counts.length; i++) {
            if (counts[i] > 0) {
                features.add(i);
            }
        }
        if (features.isEmpty()) {
            return;
        }
        features.sort((a, b) -> Long.compare(counts[b], counts[a]));
        StringBuilder line = new StringBuilder("CasparTool: inputs outside the training range: ");
        for (int i = 0; i < Math.min(features.size(), 8); i++) {
            int feature = features.get(i);
            line.append(i == 0 ? "" : ", ").append(counts[feature]).append(" values of feature ")
                    .append(columnName(names, feature));
        }
        System.err.println(line.append(features.size() > 8 ? ", ..." : ""));
    }

    /** A column by the header's name and its number ("f5 (column 5)"), or by its number alone. */
    private static String columnName(String[] names, int column) {
        return column < names.length ? names[column].trim() + " (column " + column + ")" : "column " + column;
    }

    /** A header names columns: its first cell is not a number (NaN and Infinity are numbers). */
    private static boolean isHeader(String line) {
        String first = line.split(",", -1)[0].trim();
        return !first.isEmpty() && !first.matches("[-+]?([0-9.]+([eE][-+]?[0-9]+)?|NaN|nan|Infinity|inf)");
    }

    private static float parseValue(String cell, int line, int column) throws UsageException {
        String text = cell.trim();
        try {
            if (text.equalsIgnoreCase("nan")) {
                return Float.NaN;
            }
            if (text.equalsIgnoreCase("inf") || text.equalsIgnoreCase("+inf")) {
                return Float.POSITIVE_INFINITY;
            }
            if (text.equalsIgnoreCase("-inf")) {
                return Float.NEGATIVE_INFINITY;
            }
            return Float.parseFloat(text);
        } catch (NumberFormatException notANumber) {
            throw new UsageException("line " + line + " value " + (column + 1) + ": '" + text + "' is not a number");
        }
    }

    // --- Decisions: the records of real moves --------------------------------------------------------

    /** One move with the records of its game, as the logger wrote them; `line`: its decision line in the file. */
    record Decision(String game, int move, int width, int height, Map<String, Object> action,
                    Map<String, Object> mover, List<Map<String, Object>> units, int line) {
        float[] features() {
            List<CasparFeatures.Record> records = new ArrayList<>(units.size());
            for (Map<String, Object> unit : units) {
                records.add(unit::get);
            }
            return CasparFeatures.compute(action::get, mover::get, records, width, height);
        }
    }

    /** A decision's features; records the features refuse are one line naming the file and the decision's line. */
    private static float[] featuresOf(Decision decision, String path) throws UsageException {
        try {
            return decision.features();
        } catch (IllegalArgumentException refused) {
            throw new UsageException(path + " line " + decision.line() + " (" + decision.game() + ", move " + decision.move()
                    + "): " + refused.getMessage());
        }
    }

    static List<Decision> readDecisions(Path path) throws IOException, UsageException {
        List<Decision> decisions = new ArrayList<>();
        Map<String, String[]> fields = new HashMap<>();
        try (BufferedReader reader = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
            String first = reader.readLine();
            if (first == null || !first.equals("caspar-decisions 1")) {
                throw new UsageException(path + " line 1: not a caspar-decisions 1 file");
            }
            int number = 1;
            Decision current = null;
            for (String line = reader.readLine(); line != null; line = reader.readLine()) {
                number++;
                String[] cells = line.split("\t", -1);
                int wanted = switch (cells[0]) {
                    case "fields" -> 2;
                    case "decision" -> 5;
                    default -> 1;
                };
                if (cells.length < wanted) {  // a cut line: its cells are missing, named here rather than failing below
                    throw new UsageException(path + " line " + number + ": a " + cells[0] + " line needs at least " + wanted
                            + " tab-separated cells, it has " + cells.length);
                }
                switch (cells[0]) {
                    case "fields" -> fields.put(cells[1], Arrays.copyOfRange(cells, 2, cells.length));
                    case "decision" -> {
                        current = new Decision(cells[1], Integer.parseInt(cells[2]), Integer.parseInt(cells[3]),
                                Integer.parseInt(cells[4]), null, null, new ArrayList<>(), number);
                        decisions.add(current);
                    }
                    case "action", "mover", "unit" -> {
                        if (current == null) {
                            throw new UsageException(path + " line " + number + ": a record before any decision");
                        }
                        Map<String, Object> record = record(fields.get(cells[0].equals("action") ? "action" : "unit"), cells,
                                path, number);
                        if (cells[0].equals("unit")) {
                            current.units().add(record);
                        } else {
                            current = cells[0].equals("action")
                                    ? new Decision(current.game(), current.move(), current.width(), current.height(), record,
                                            current.mover(), current.units(), current.line())
                                    : new Decision(current.game(), current.move(), current.width(), current.height(),
                                            current.action(), record, current.units(), current.line());
                            decisions.set(decisions.size() - 1, current);
                        }
                    }
                    default -> throw new UsageException(path + " line " + number + ": unknown line " + cells[0]);
                }
            }
        } catch (NumberFormatException error) {
            throw new UsageException(path + ": " + error.getMessage());
        }
        return decisions;
    }

    private static Map<String, Object> record(String[] names, String[] cells, Path path, int number) throws UsageException {
        if (names == null || names.length != cells.length - 1) {
            throw new UsageException(path + " line " + number + ": " + (cells.length - 1) + " values for "
                    + (names == null ? "no" : names.length) + " fields");
        }
        Map<String, Object> record = new HashMap<>();
        for (int i = 0; i < names.length; i++) {
            String value = cells[i + 1];
            record.put(names[i], names[i].equals("TYPE") || names[i].equals("ROLE") ? value : Double.valueOf(value));
        }
        return record;
    }

    private static void writeFloats(Path path, float[][] rows) throws IOException {
        int width = rows.length == 0 ? 0 : rows[0].length;
        ByteBuffer buffer = ByteBuffer.allocate(4 * rows.length * width).order(ByteOrder.LITTLE_ENDIAN);
        for (float[] row : rows) {
            for (float value : row) {
                buffer.putFloat(value);
            }
        }
        try (OutputStream out = Files.newOutputStream(path)) {
            out.write(buffer.array());
        }
    }

    // --- Benchmark -------------------------------------------------------------------------------------

    /** Median milliseconds per call at batch 1 on this thread, after a warm-up: the model on test_inputs.csv rows;
     * with decisions, the features and the model together on real moves. */
    private static void benchmark(CasparModel model, Path folder, List<Decision> decisions) throws IOException {
        Path inputs = folder.resolve("test_inputs.csv");
        List<String> lines = Files.readAllLines(inputs, StandardCharsets.UTF_8);
        if (lines.size() < 2) {
            throw new IOException(inputs + ": no rows after the header: nothing to time the model on");
        }
        float[][] rows = new float[256][model.inputWidth()];
        for (int r = 0; r < rows.length; r++) {
            int number = 1 + r % (lines.size() - 1);
            String[] cells = lines.get(number).split(",");
            if (cells.length < model.inputWidth()) {
                throw new IOException(inputs + " line " + (number + 1) + ": " + cells.length + " values, the model takes "
                        + model.inputWidth());
            }
            for (int i = 0; i < model.inputWidth(); i++) {
                try {
                    rows[r][i] = Float.parseFloat(cells[i]);
                } catch (NumberFormatException error) {
                    throw new IOException(inputs + " line " + (number + 1) + ": value " + (i + 1) + " is not a number");
                }
            }
        }
        float[] sink = {0};
        System.out.println("batch1_ms " + median(() -> sink[0] += model.predict(rows[(int) (System.nanoTime() & 255)])));
        long started = System.nanoTime();
        for (int i = 0; i < 5; i++) {
            sink[0] += model.predict(rows)[0];
        }
        System.out.println("batch256_ms " + (System.nanoTime() - started) / 5e6);
        if (!decisions.isEmpty()) {
            int[] next = {0};
            System.out.println("features_ms " + median(() -> {
                Decision decision = decisions.get(next[0]++ % decisions.size());
                sink[0] += decision.features()[0];
            }));
            System.out.println("features_and_model_ms " + median(() -> {
                Decision decision = decisions.get(next[0]++ % decisions.size());
                sink[0] += model.predict(decision.features());
            }));
        }
        if (Float.isNaN(sink[0])) {
            System.out.println("nan");
        }
    }

    private static double median(Runnable call) {
        long warmUpEnds = System.nanoTime() + 1_500_000_000L;  // the JIT compiles the hot loops
        for (int i = 0; i < 20000 && (i < 200 || System.nanoTime() < warmUpEnds); i++) {
            call.run();
        }
        double[] times = new double[1000];
        for (int i = 0; i < times.length; i++) {
            long started = System.nanoTime();
            call.run();
            times[i] = (System.nanoTime() - started) / 1e6;
        }
        Arrays.sort(times);
        return times[times.length / 2];
    }
}
