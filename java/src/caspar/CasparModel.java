/*
 * CasparModel: the CASPAR move-scoring model of caspar-trainer, in plain Java.
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

import java.io.DataInputStream;
import java.io.IOException;
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
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * A CASPAR model exported by caspar-trainer, computed in plain Java (no dependency beyond the JDK).
 *
 * <p>Load it from an export folder and score candidate paths with their <b>raw</b> feature values (as
 * {@link CasparFeatures#compute} gives them); the model normalises them itself, so the caller never does:
 *
 * <pre>
 *   CasparModel model = CasparModel.load(Path.of("data/ai/brains/model-v1"));   // IOException: one message
 *   if (!model.featureSet().equals(CasparFeatures.FEATURE_SET)) { ... }          // features and model must match
 *   float reward = model.predict(CasparFeatures.compute(action, mover, units, width, height));
 * </pre>
 *
 * <p>The folder holds {@code model.caspar} (the layers and their weights, format below) and
 * {@code min_max_feature_normalization.csv} (lines {@code index,min,max}: the range of each feature in the
 * training rows); each input becomes clamp((x - min) / (max - min), 0, 1), and 0 where max = min. From a
 * shell, {@code CasparTool predict FOLDER < rows.csv} prints one prediction per row of raw values.
 *
 * <p>{@code model.caspar}: text lines up to a line {@code data}, then every array in the order its
 * {@code array} line names it, little-endian, float32 ({@code f32}) or int32 ({@code i32}):
 * <pre>
 *   caspar-model 3                    (2 is read too: a format-2 model always has a network)
 *   feature_set HASH
 *   inputs N
 *   layer TYPE PARAMETERS...          (in the order the network applies them)
 *   array NAME f32|i32 COUNT          (the arrays of the layer above)
 *   output clip|sigmoid               (trees + network clipped to [0, 1], the network 0 when the
 *                                      model has no layer but the trees; or a sigmoid unit)
 *   data
 * </pre>
 * Layers: {@code periodic F K D}, {@code piecewise F BINS} (the bins of all F inputs, input after
 * input; array {@code start}: each input's first bin, F + 1 values), {@code adapter M W}, {@code dense M IN OUT
 * ACTIVATION}, {@code batchensemble M IN OUT ACTIVATION}, {@code affine M W} (batch normalisation,
 * folded), {@code heads M W} (the ensemble's outputs, averaged), and {@code trees T NODES} (applied to
 * the normalised inputs, added to the network's output). An array of M members holds member after
 * member.
 */
public final class CasparModel {
    public static final String MODEL_FILE = "model.caspar";
    public static final String NORMALIZATION_FILE = "min_max_feature_normalization.csv";
    // 2: a network, with or without trees; 3: also the trees alone (no layer but the trees). A format-1
    // model comes with the CasparModel.java of its export.
    private static final int FORMAT = 3;
    private static final int OLDEST_FORMAT = 2;

    private final String featureSet;
    private final int inputWidth;
    private final float[] minimum;
    private final float[] maximum;
    private final List<Layer> layers;
    private final Trees trees;
    private final boolean sigmoidOutput;
    private final AtomicLongArray outsideTrainingRange;

    private CasparModel(String featureSet, int inputWidth, float[] minimum, float[] maximum, List<Layer> layers,
                        Trees trees, boolean sigmoidOutput) {
        this.featureSet = featureSet;
        this.inputWidth = inputWidth;
        this.minimum = minimum;
        this.maximum = maximum;
        this.layers = layers;
        this.trees = trees;
        this.sigmoidOutput = sigmoidOutput;
        this.outsideTrainingRange = new AtomicLongArray(inputWidth);
    }

    /** The feature-set version the model was trained on (schema.json's "version"). */
    public String featureSet() {
        return featureSet;
    }

    /** How many raw feature values {@link #predict(float[])} takes. */
    public int inputWidth() {
        return inputWidth;
    }

    /**
     * The predicted reward (0 to 1) of one candidate path, from its raw feature values.
     *
     * @throws IllegalArgumentException if the row is not {@link #inputWidth()} values or one is NaN or
     *         infinite (named: a missing value would otherwise pass as a silent 0 or a NaN score)
     */
    public float predict(float[] rawFeatures) {
        if (rawFeatures.length != inputWidth) {
            throw new IllegalArgumentException("expected " + inputWidth + " features, got " + rawFeatures.length);
        }
        for (int i = 0; i < rawFeatures.length; i++) {
            if (!Float.isFinite(rawFeatures[i])) {
                throw new IllegalArgumentException("feature " + i + " is " + rawFeatures[i] + ": the model takes finite raw values");
            }
        }
        float[] x = normalise(rawFeatures);
        float[] values = x;
        for (Layer layer : layers) {
            values = layer.apply(values);
        }
        float network = layers.isEmpty() ? 0f : values[0];  // no layers: the trees alone
        if (trees == null) {
            return sigmoidOutput ? sigmoid(network) : network;
        }
        return Math.min(1f, Math.max(0f, trees.apply(x) + network));
    }

    /** The predicted rewards of several candidate paths, one row of raw feature values each. */
    public float[] predict(float[][] rawRows) {
        float[] predictions = new float[rawRows.length];
        for (int row = 0; row < rawRows.length; row++) {
            predictions[row] = predict(rawRows[row]);
        }
        return predictions;
    }

    /**
     * The normalisation (the one contract: raw values in): clamp((x - min) / (max - min), 0, 1) in double,
     * then float; a feature constant in the training rows (max = min) is 0 whatever its value, so a value
     * the model never saw vary cannot move the prediction. Values outside [min, max] are counted.
     */
    private float[] normalise(float[] raw) {
        float[] x = new float[raw.length];
        for (int i = 0; i < raw.length; i++) {
            if (!(raw[i] >= minimum[i] && raw[i] <= maximum[i])) {
                outsideTrainingRange.incrementAndGet(i);
            }
            if (maximum[i] > minimum[i]) {
                double scaled = ((double) raw[i] - minimum[i]) / ((double) maximum[i] - minimum[i]);
                x[i] = (float) Math.min(1.0, Math.max(0.0, scaled));
            }
        }
        return x;
    }

    /**
     * Per feature, how many values {@code predict} was given outside the range of the training rows (or NaN)
     * since loading or the last reset: the game's inputs drifting from what the model learnt from. A bot can
     * report the features with large counts.
     */
    public long[] outsideTrainingRange() {
        long[] counts = new long[inputWidth];
        for (int i = 0; i < inputWidth; i++) {
            counts[i] = outsideTrainingRange.get(i);
        }
        return counts;
    }

    /** Sets the counts of {@link #outsideTrainingRange()} back to 0. */
    public void resetOutsideTrainingRange() {
        for (int i = 0; i < inputWidth; i++) {
            outsideTrainingRange.set(i, 0);
        }
    }

    // --- Loading -------------------------------------------------------------------------------------

    /** The largest model.caspar read (the default model's is about 1.5 MB). */
    private static final long LARGEST_FILE = 512L << 20;
    private static final int LONGEST_HEADER_LINE = 4096;

    /**
     * Reads model.caspar and the normalisation CSV of an export folder. Every header field, layer size and
     * array length is checked before anything is allocated from it; a damaged, truncated or unknown file
     * fails here, never later in {@code predict}.
     *
     * @throws IOException (only) with one message naming the file and what is wrong with it
     */
    public static CasparModel load(Path folder) throws IOException {
        Path csv = folder.resolve(NORMALIZATION_FILE);
        Path file = folder.resolve(MODEL_FILE);
        try {
            float[][] bounds = readNormalization(csv);
            if (Files.size(file) > LARGEST_FILE) {
                throw new IOException("larger than " + (LARGEST_FILE >> 20) + " MB: not a model file");
            }
            CasparModel model = read(ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN));
            if (bounds[0].length != model.inputWidth) {
                throw new IOException(NORMALIZATION_FILE + " has " + bounds[0].length + " features, the model " + model.inputWidth);
            }
            return new CasparModel(model.featureSet, model.inputWidth, bounds[0], bounds[1], model.layers, model.trees,
                    model.sigmoidOutput);
        } catch (ModelFileException | RuntimeException error) {  // a check below, or one this code did not foresee
            throw new IOException(file + ": " + error.getMessage(), error);
        } catch (IOException error) {
            throw new IOException(file + ": " + error.getMessage(), error);
        }
    }

    /** A problem found in a model file or its normalisation CSV (reported by load as an IOException). */
    private static final class ModelFileException extends Exception {
        private static final long serialVersionUID = 1L;

        ModelFileException(String message) {
            super(message);
        }
    }

    private static ModelFileException bad(String message) {
        return new ModelFileException(message);
    }

    private static CasparModel read(ByteBuffer in) throws ModelFileException {
        List<String[]> header = new ArrayList<>();
        for (String line = readLine(in); !line.equals("data"); line = readLine(in)) {
            header.add(line.trim().split(" +"));
        }
        if (header.isEmpty()) {
            throw bad("no header before its data");
        }
        String[] first = header.get(0);
        int format = first.length == 2 && first[0].equals("caspar-model") && first[1].matches("[0-9]{1,3}")
                ? Integer.parseInt(first[1]) : -1;
        if (format < OLDEST_FORMAT || format > FORMAT) {
            throw bad("not a caspar-model file of format " + OLDEST_FORMAT + " to " + FORMAT + " (" + String.join(" ", first)
                    + "): use the CasparModel.java exported with it");
        }
        String featureSet = null;
        int inputWidth = -1;
        String output = null;
        List<String[]> layerLines = new ArrayList<>();
        List<Map<String, Object>> layerArrays = new ArrayList<>();
        for (String[] line : header.subList(1, header.size())) {
            switch (line[0]) {
                case "feature_set" -> featureSet = field(line, 1)[1];
                case "inputs" -> inputWidth = positive(field(line, 1)[1], "inputs");
                case "output" -> output = field(line, 1)[1];
                case "layer" -> {
                    if (line.length < 2) {
                        throw bad("a layer line without a type");
                    }
                    layerLines.add(line);
                    layerArrays.add(new HashMap<>());
                }
                case "array" -> {
                    if (layerArrays.isEmpty()) {
                        throw bad("an array line before any layer line");
                    }
                    field(line, 3);
                    Map<String, Object> arrays = layerArrays.get(layerArrays.size() - 1);
                    if (arrays.put(line[1], readArray(in, line[1], line[2], line[3])) != null) {
                        throw bad("array " + line[1] + " twice in one layer");
                    }
                }
                default -> throw bad("unknown line " + String.join(" ", line));
            }
        }
        if (in.hasRemaining()) {
            throw bad(in.remaining() + " bytes after the last array");
        }
        if (featureSet == null || inputWidth < 0 || output == null) {
            throw bad("the header lacks " + (featureSet == null ? "feature_set" : inputWidth < 0 ? "inputs" : "output"));
        }
        if (featureSet.equals(CasparFeatures.FEATURE_SET) && inputWidth != CasparFeatures.WIDTH) {
            // a model of the wrong width would fail only at predict, in the game: refused here, at load
            throw bad("feature set " + featureSet + " has " + CasparFeatures.WIDTH + " inputs; this model takes " + inputWidth);
        }
        boolean sigmoidOutput = switch (output) {
            case "sigmoid" -> true;
            case "clip" -> false;
            default -> throw bad("unknown output " + output);
        };
        List<Layer> layers = new ArrayList<>();
        Trees trees = null;
        int width = inputWidth;  // the width the next network layer takes
        for (int i = 0; i < layerLines.size(); i++) {
            String[] line = layerLines.get(i);
            Map<String, Object> arrays = layerArrays.get(i);
            if (line[1].equals("trees")) {
                if (trees != null) {
                    throw bad("two trees layers");
                }
                trees = new Trees(line, arrays, inputWidth);
            } else {
                Layer layer = layer(line, arrays, width);
                width = layer.outputs();
                layers.add(layer);
            }
            if (!arrays.isEmpty()) {
                throw bad("layer " + line[1] + " has arrays it does not use: " + arrays.keySet());
            }
        }
        if (!layers.isEmpty() && width != 1) {
            throw bad("the network ends in " + width + " values, not 1");
        }
        if (trees == null && (!sigmoidOutput || layers.isEmpty())) {
            throw bad("output " + output + " needs " + (layers.isEmpty() ? "a network or trees" : "trees"));
        }
        return new CasparModel(featureSet, inputWidth, null, null, fuseEncodedInputs(layers), trees, sigmoidOutput);
    }

    private static String[] field(String[] line, int values) throws ModelFileException {
        if (line.length != values + 1) {
            throw bad("line " + String.join(" ", line) + ": expected " + values + " value" + (values == 1 ? "" : "s"));
        }
        return line;
    }

    private static int positive(String text, String what) throws ModelFileException {
        try {
            int value = Integer.parseInt(text);
            if (value > 0) {
                return value;
            }
        } catch (NumberFormatException notAnInteger) {
            // reported below
        }
        throw bad(what + " " + text + ": not a positive integer");
    }

    /** A network layer from its line, taking its arrays (each checked for its length) out of `arrays`. */
    private static Layer layer(String[] line, Map<String, Object> arrays, int width) throws ModelFileException {
        String type = line[1];
        int[] n = new int[line.length - 2];
        String activation = "linear";
        int expected = switch (type) {
            case "periodic", "dense", "batchensemble" -> 3;
            case "piecewise", "adapter", "affine", "heads" -> 2;
            default -> throw bad("unknown layer " + type + " (this CasparModel.java is older than the model)");
        };
        if (type.equals("dense") || type.equals("batchensemble")) {
            if (line.length != expected + 3) {
                throw bad("layer " + type + ": expected MEMBERS IN OUT ACTIVATION");
            }
            activation = line[line.length - 1];
        } else if (line.length != expected + 2) {
            throw bad("layer " + type + ": expected " + expected + " sizes");
        }
        for (int i = 0; i < expected; i++) {
            n[i] = positive(line[i + 2], "layer " + type + " size");
        }
        Layer layer = switch (type) {
            case "periodic" -> new Periodic(n[0], n[1], n[2], f32(arrays, "coefficients", (long) n[0] * n[1]),
                    f32(arrays, "kernel", 2L * n[1] * n[2]), f32(arrays, "bias", n[2]));
            case "piecewise" -> new Piecewise(n[0], starts(arrays, n[0], n[1]), f32(arrays, "lower", n[1]), f32(arrays, "width", n[1]));
            case "adapter" -> new Adapter(n[0], n[1], f32(arrays, "scale", (long) n[0] * n[1]));
            case "dense" -> new Dense(n[0], n[1], n[2], activation(activation), null, f32(arrays, "kernel", (long) n[1] * n[2]), null,
                    f32(arrays, "bias", n[2], (long) n[0] * n[2]));
            case "batchensemble" -> new Dense(n[0], n[1], n[2], activation(activation), f32(arrays, "r", (long) n[0] * n[1]),
                    f32(arrays, "kernel", (long) n[1] * n[2]), f32(arrays, "s", (long) n[0] * n[2]),
                    f32(arrays, "bias", n[2], (long) n[0] * n[2]));
            case "affine" -> new Affine(n[0], n[1], f32(arrays, "scale", n[1]), f32(arrays, "shift", n[1]));
            default -> new Heads(n[0], n[1], f32(arrays, "kernel", (long) n[0] * n[1]), f32(arrays, "bias", n[0]));
        };
        if (layer.inputs() != width) {
            throw bad("layer " + String.join(" ", line) + " takes " + layer.inputs() + " values, the layer before gives " + width);
        }
        return layer;
    }

    /**
     * The piecewise-linear encoding, the ensemble's adapter and the first dense layer as one layer
     * (the same sums, about ten times faster; see EncodedDense).
     */
    private static List<Layer> fuseEncodedInputs(List<Layer> layers) {
        List<Layer> fused = new ArrayList<>(layers);
        if (fused.size() >= 2 && fused.get(0) instanceof Piecewise encoding) {
            Adapter adapter = fused.get(1) instanceof Adapter a ? a : null;
            int next = adapter == null ? 1 : 2;
            if (fused.size() > next && fused.get(next) instanceof Dense dense && dense.r() == null
                    && dense.bias().length == dense.out() && sortedBins(encoding)) {
                fused.subList(0, next + 1).clear();
                fused.add(0, new EncodedDense(encoding, adapter, dense));
            }
        }
        return fused;
    }

    /** Whether each input's bins that an input in [0, 1] can reach come first (as the exporter writes them). */
    private static boolean sortedBins(Piecewise encoding) {
        for (int j = 0; j < encoding.features(); j++) {
            boolean above = false;
            for (int i = encoding.start()[j]; i < encoding.start()[j + 1]; i++) {
                if (encoding.lower()[i] > 1f) {
                    above = true;
                } else if (above) {
                    return false;
                }
            }
        }
        return true;
    }

    private static Activation activation(String name) throws ModelFileException {
        return switch (name) {
            case "linear" -> x -> x;
            case "relu" -> x -> Math.max(0f, x);
            case "sigmoid" -> CasparModel::sigmoid;
            case "tanh" -> x -> (float) Math.tanh(x);
            case "silu", "swish" -> x -> x * sigmoid(x);
            case "elu" -> x -> x > 0 ? x : (float) Math.expm1(x);
            case "gelu" -> x -> (float) (0.5 * x * (1.0 + erf(x / Math.sqrt(2.0))));
            default -> throw bad("unknown activation " + name);
        };
    }

    private static String readLine(ByteBuffer in) throws ModelFileException {
        StringBuilder line = new StringBuilder();
        while (true) {
            if (!in.hasRemaining()) {
                throw bad("the file ends before its data (truncated, or not a model file)");
            }
            byte b = in.get();
            if (b == '\n') {
                return line.toString();
            }
            if (b < 0x20 || b > 0x7e || line.length() >= LONGEST_HEADER_LINE) {
                throw bad("byte " + (in.position() - 1) + ": not a header line of a model file");
            }
            line.append((char) b);
        }
    }

    /** An array of `count` values, read only once the file is known to hold them. */
    private static Object readArray(ByteBuffer in, String name, String type, String count) throws ModelFileException {
        long values;
        try {
            values = Long.parseLong(count);
        } catch (NumberFormatException notANumber) {
            throw bad("array " + name + ": count " + count + " is not a number");
        }
        if (values < 0 || 4 * values > in.remaining()) {
            throw bad("array " + name + ": " + count + " values, the file holds " + in.remaining() / 4 + " more (truncated?)");
        }
        switch (type) {
            case "f32" -> {
                float[] array = new float[(int) values];
                in.asFloatBuffer().get(array);
                in.position(in.position() + 4 * (int) values);
                for (int i = 0; i < array.length; i++) {
                    if (Float.isNaN(array[i]) || (Float.isInfinite(array[i]) && !name.equals("threshold"))) {
                        throw bad("array " + name + ": value " + i + " is " + array[i]);
                    }
                }
                return array;
            }
            case "i32" -> {
                int[] array = new int[(int) values];
                in.asIntBuffer().get(array);
                in.position(in.position() + 4 * (int) values);
                return array;
            }
            default -> throw bad("array " + name + ": unknown type " + type);
        }
    }

    /** Takes a float array out of a layer's arrays, checking its length (one of `lengths`). */
    private static float[] f32(Map<String, Object> arrays, String name, long... lengths) throws ModelFileException {
        Object array = arrays.remove(name);
        if (!(array instanceof float[] values)) {
            throw bad("missing float array " + name);
        }
        for (long length : lengths) {
            if (values.length == length) {
                return values;
            }
        }
        throw bad("array " + name + " has " + values.length + " values, expected " + lengths[0]);
    }

    private static int[] i32(Map<String, Object> arrays, String name, long length) throws ModelFileException {
        Object array = arrays.remove(name);
        if (!(array instanceof int[] values)) {
            throw bad("missing int array " + name);
        }
        if (values.length != length) {
            throw bad("array " + name + " has " + values.length + " values, expected " + length);
        }
        return values;
    }

    private static float[][] readNormalization(Path path) throws IOException {
        List<String> lines = Files.readAllLines(path, StandardCharsets.UTF_8);
        if (lines.isEmpty() || !lines.get(0).trim().equals("feature,min,max")) {
            throw new IOException(path + " line 1: expected the header feature,min,max");
        }
        int width = lines.size() - 1;
        float[][] bounds = new float[2][width];
        for (int i = 0; i < width; i++) {
            String[] cells = lines.get(i + 1).split(",");
            try {
                if (cells.length != 3 || Integer.parseInt(cells[0].trim()) != i) {
                    throw new NumberFormatException("expected " + i + ",MIN,MAX");
                }
                bounds[0][i] = Float.parseFloat(cells[1]);
                bounds[1][i] = Float.parseFloat(cells[2]);
            } catch (NumberFormatException error) {
                throw new IOException(path + " line " + (i + 2) + ": " + error.getMessage());
            }
            if (!Float.isFinite(bounds[0][i]) || !Float.isFinite(bounds[1][i]) || bounds[1][i] < bounds[0][i]) {
                throw new IOException(path + " line " + (i + 2) + ": min and max must be finite, max at least min");
            }
        }
        return bounds;
    }

    // --- The layers ----------------------------------------------------------------------------------

    private interface Layer {
        float[] apply(float[] x);

        int inputs();

        int outputs();
    }

    private interface Activation {
        float apply(float x);
    }

    /** PLR-lite embedding: per input, cos and sin of 2 pi c x for K frequencies, then a shared dense + ReLU. */
    private record Periodic(int features, int frequencies, int dimension, float[] coefficients, float[] kernel, float[] bias)
            implements Layer {
        public int inputs() {
            return features;
        }

        public int outputs() {
            return features * dimension;
        }

        public float[] apply(float[] x) {
            float[] out = new float[features * dimension];
            float[] angles = new float[2 * frequencies];
            for (int j = 0; j < features; j++) {
                float turned = (float) (2 * Math.PI) * x[j];
                for (int f = 0; f < frequencies; f++) {
                    float angle = turned * coefficients[j * frequencies + f];
                    angles[f] = (float) Math.cos(angle);
                    angles[frequencies + f] = (float) Math.sin(angle);
                }
                for (int d = 0; d < dimension; d++) {
                    float sum = bias[d];
                    for (int a = 0; a < 2 * frequencies; a++) {
                        sum += angles[a] * kernel[a * dimension + d];
                    }
                    out[j * dimension + d] = Math.max(0f, sum);
                }
            }
            return out;
        }
    }

    /** Each input's first bin, and the end of the last input's: F + 1 increasing values from 0 to BINS. */
    private static int[] starts(Map<String, Object> arrays, int features, int bins) throws ModelFileException {
        if (!(arrays.remove("start") instanceof int[] start) || start.length != features + 1 || start[0] != 0
                || start[features] != bins) {
            throw bad("piecewise encoding: expected an int array start of " + (features + 1) + " values from 0 to " + bins);
        }
        for (int j = 0; j < features; j++) {
            if (start[j + 1] <= start[j]) {
                throw bad("piecewise encoding: input " + j + " has no bin");
            }
        }
        return start;
    }

    /** Piecewise-linear encoding: per input and bin, how far the input has gone through the bin. */
    private record Piecewise(int features, int[] start, float[] lower, float[] width) implements Layer {
        public int inputs() {
            return features;
        }

        public int outputs() {
            return start[features];
        }

        public float[] apply(float[] x) {
            float[] out = new float[start[features]];
            for (int j = 0; j < features; j++) {
                for (int i = start[j]; i < start[j + 1]; i++) {
                    out[i] = encoded(x, j, i);
                }
            }
            return out;
        }

        float encoded(float[] x, int feature, int bin) {
            return Math.min(1f, Math.max(0f, (x[feature] - lower[bin]) / width[bin]));
        }
    }

    /** TabM-mini's adapter: M copies of the input, each scaled by its member's vector. */
    private record Adapter(int members, int width, float[] scale) implements Layer {
        public int inputs() {
            return width;
        }

        public int outputs() {
            return members * width;
        }

        public float[] apply(float[] x) {
            float[] out = new float[members * width];
            for (int m = 0; m < members; m++) {
                for (int i = 0; i < width; i++) {
                    out[m * width + i] = x[i] * scale[m * width + i];
                }
            }
            return out;
        }
    }

    /**
     * Dense layer applied to each of M members with shared weights; with r and s (BatchEnsemble, full
     * TabM) each member scales its inputs by r and its outputs by s, and has its own bias.
     */
    private record Dense(int members, int in, int out, Activation activation, float[] r, float[] kernel, float[] s,
                         float[] bias) implements Layer {
        public int inputs() {
            return members * in;
        }

        public int outputs() {
            return members * out;
        }

        public float[] apply(float[] x) {
            float[] result = new float[members * out];
            float[] sum = new float[out];
            for (int m = 0; m < members; m++) {
                Arrays.fill(sum, 0f);
                for (int i = 0; i < in; i++) {
                    float value = r == null ? x[m * in + i] : x[m * in + i] * r[m * in + i];
                    if (value == 0f) {
                        continue;  // most encoded inputs are 0
                    }
                    int row = i * out;
                    for (int o = 0; o < out; o++) {
                        sum[o] += value * kernel[row + o];
                    }
                }
                int own = bias.length == out ? 0 : m * out;  // one bias for all members, or one each
                for (int o = 0; o < out; o++) {
                    float pre = s == null ? sum[o] + bias[own + o] : sum[o] * s[m * out + o] + bias[own + o];
                    result[m * out + o] = activation.apply(pre);
                }
            }
            return result;
        }
    }

    /**
     * Piecewise-linear encoding, [adapter,] dense, computed together. An encoded input is 1 for the
     * bins its value has passed, a fraction in the bin it lies in and 0 above: so the dense layer's
     * sum over one feature's bins is a precomputed sum of the kernel rows of the passed bins
     * (scaled by the member's adapter), plus the one partial bin, instead of B products per row.
     */
    private static final class EncodedDense implements Layer {
        private final Piecewise encoding;
        private final int members;
        private final int out;
        private final float[] scale;  // the adapter's, or null
        private final Dense dense;
        private final int[] used;  // per feature: its bins an input in [0, 1] can reach (they start at 1 or below)
        private final int[] first;  // per feature: its first row in `passed`
        private final float[] passed;  // per feature, k = 0..used, member, output: the scaled kernel rows of bins 0..k-1, summed

        EncodedDense(Piecewise encoding, Adapter adapter, Dense dense) {
            this.encoding = encoding;
            this.dense = dense;
            this.members = dense.members();
            this.out = dense.out();
            this.scale = adapter == null ? null : adapter.scale();
            int features = encoding.features();
            int[] start = encoding.start();
            int width = start[features];
            int block = members * out;
            used = new int[features];
            first = new int[features];
            int rows = 0;
            for (int j = 0; j < features; j++) {
                int bins = start[j + 1] - start[j];
                while (used[j] < bins && encoding.lower()[start[j] + used[j]] <= 1f) {
                    used[j]++;
                }
                for (int b = used[j]; b < bins; b++) {
                    if (encoding.lower()[start[j] + b] <= 1f) {
                        throw new IllegalArgumentException("piecewise encoding: feature " + j + "'s bins are not in order");
                    }
                }
                first[j] = rows;
                rows += used[j] + 1;
            }
            passed = new float[rows * block];
            for (int j = 0; j < features; j++) {
                for (int k = 1; k <= used[j]; k++) {
                    int i = start[j] + k - 1;
                    int to = (first[j] + k) * block;
                    for (int m = 0; m < members; m++) {
                        float factor = scale == null ? 1f : scale[m * width + i];
                        for (int o = 0; o < out; o++) {
                            passed[to + m * out + o] = passed[to - block + m * out + o] + factor * dense.kernel()[i * out + o];
                        }
                    }
                }
            }
        }

        public int inputs() {
            return encoding.features();
        }

        public int outputs() {
            return members * out;
        }

        public float[] apply(float[] x) {
            int[] start = encoding.start();
            int width = start[encoding.features()];
            int block = members * out;
            float[] kernel = dense.kernel();
            float[] sum = new float[block];
            for (int j = 0; j < encoding.features(); j++) {
                int k = 0;
                while (k < used[j] && encoded(x, j, k) == 1f) {
                    k++;
                }
                int row = (first[j] + k) * block;
                for (int o = 0; k > 0 && o < block; o++) {
                    sum[o] += passed[row + o];
                }
                for (int b = k; b < used[j]; b++) {
                    float value = encoded(x, j, b);
                    if (value == 0f) {
                        continue;
                    }
                    int i = start[j] + b;
                    for (int m = 0; m < members; m++) {
                        float scaled = scale == null ? value : value * scale[m * width + i];
                        for (int o = 0; o < out; o++) {
                            sum[m * out + o] += scaled * kernel[i * out + o];
                        }
                    }
                }
            }
            float[] result = new float[block];
            for (int o = 0; o < block; o++) {
                result[o] = dense.activation().apply(sum[o] + dense.bias()[o % out]);
            }
            return result;
        }

        private float encoded(float[] x, int feature, int bin) {
            return encoding.encoded(x, feature, encoding.start()[feature] + bin);
        }
    }

    /** Batch normalisation at inference, folded: x * scale + shift, per feature, for every member. */
    private record Affine(int members, int width, float[] scale, float[] shift) implements Layer {
        public int inputs() {
            return members * width;
        }

        public int outputs() {
            return members * width;
        }

        public float[] apply(float[] x) {
            float[] out = new float[members * width];
            for (int m = 0; m < members; m++) {
                for (int i = 0; i < width; i++) {
                    out[m * width + i] = x[m * width + i] * scale[i] + shift[i];
                }
            }
            return out;
        }
    }

    /** One linear output per member, averaged: [M, W] to one value. */
    private record Heads(int members, int width, float[] kernel, float[] bias) implements Layer {
        public int inputs() {
            return members * width;
        }

        public int outputs() {
            return 1;
        }

        public float[] apply(float[] x) {
            float total = 0f;
            for (int m = 0; m < members; m++) {
                float sum = 0f;
                for (int i = 0; i < width; i++) {
                    sum += x[m * width + i] * kernel[m * width + i];
                }
                total += sum + bias[m];
            }
            return new float[] {total / members};
        }
    }

    /** Gradient-boosted regression trees, walked node by node: the sum of the leaves each row reaches. */
    private static final class Trees {
        private final int[] roots;
        private final int[] feature;
        private final float[] threshold;
        private final int[] left;
        private final int[] right;
        private final float[] value;

        /** `layer trees T NODES`: checked so that every walk ends at a leaf after at most NODES steps. */
        Trees(String[] line, Map<String, Object> arrays, int inputs) throws ModelFileException {
            if (line.length != 4) {
                throw bad("layer trees: expected TREES NODES");
            }
            int count = positive(line[2], "layer trees size");
            int nodes = positive(line[3], "layer trees size");
            roots = i32(arrays, "roots", count);
            feature = i32(arrays, "feature", nodes);
            threshold = f32(arrays, "threshold", nodes);
            left = i32(arrays, "left", nodes);
            right = i32(arrays, "right", nodes);
            value = f32(arrays, "value", nodes);
            for (int root : roots) {
                if (root < 0 || root >= nodes) {
                    throw bad("trees: root " + root + " is not a node");
                }
            }
            for (int node = 0; node < nodes; node++) {
                boolean leaf = left[node] == -1 && right[node] == -1;
                // Children come after their parent, as the exporter writes them: no walk can loop.
                boolean inner = left[node] > node && right[node] > node && left[node] < nodes && right[node] < nodes
                        && feature[node] >= 0 && feature[node] < inputs && !Float.isNaN(threshold[node]);
                if (!leaf && !inner) {
                    throw bad("trees: node " + node + " is neither a leaf nor a split on an input with children after it");
                }
            }
        }

        float apply(float[] x) {
            double sum = 0;
            for (int root : roots) {
                int node = root;
                while (left[node] >= 0) {
                    node = x[feature[node]] <= threshold[node] ? left[node] : right[node];
                }
                sum += value[node];
            }
            return (float) sum;
        }
    }

    private static float sigmoid(float x) {
        return (float) (1.0 / (1.0 + Math.exp(-x)));
    }

    /** The error function, from Numerical Recipes' Chebyshev fit of erfc (fractional error below 1.2e-7). */
    static double erf(double x) {
        double z = Math.abs(x);
        double t = 1.0 / (1.0 + 0.5 * z);
        double erfc = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
                + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
                + t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? 1.0 - erfc : erfc - 1.0;
    }
}
