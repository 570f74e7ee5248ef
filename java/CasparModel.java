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
import java.io.BufferedReader;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
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
 * A CASPAR model exported by caspar-trainer, computed in plain Java (no dependency beyond the JDK).
 *
 * <p>Load it from an export folder and score candidate paths with their raw feature values; the
 * model applies the game's min-max normalisation itself:
 *
 * <pre>
 *   CasparModel model = CasparModel.load(Path.of("data/ai/brains/model-v1"));
 *   if (!model.featureSet().equals(EXPECTED_FEATURE_SET)) { ... }   // the game's feature code must match
 *   float reward = model.predict(rawFeatures);                          // one candidate path
 * </pre>
 *
 * <p>The folder holds {@code model.caspar} (the layers and their weights, format below) and
 * {@code min_max_feature_normalization.csv} (lines {@code index,min,max}); each input becomes
 * clamp((x - min) / (max - min), 0, 1). From a shell, {@code java CasparModel.java FOLDER < rows.csv}
 * prints one prediction per line for rows of comma-separated raw feature values.
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

    private CasparModel(String featureSet, int inputWidth, float[] minimum, float[] maximum, List<Layer> layers,
                        Trees trees, boolean sigmoidOutput) {
        this.featureSet = featureSet;
        this.inputWidth = inputWidth;
        this.minimum = minimum;
        this.maximum = maximum;
        this.layers = layers;
        this.trees = trees;
        this.sigmoidOutput = sigmoidOutput;
    }

    /** The feature-set version the model was trained on (schema.json's "version"). */
    public String featureSet() {
        return featureSet;
    }

    /** How many raw feature values {@link #predict(float[])} takes. */
    public int inputWidth() {
        return inputWidth;
    }

    /** The predicted reward (0 to 1) of one candidate path, from its raw feature values. */
    public float predict(float[] rawFeatures) {
        if (rawFeatures.length != inputWidth) {
            throw new IllegalArgumentException("expected " + inputWidth + " features, got " + rawFeatures.length);
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

    /** The game's normalisation: in double, as MegaMek computes it, then float for the network. */
    private float[] normalise(float[] raw) {
        float[] x = new float[raw.length];
        for (int i = 0; i < raw.length; i++) {
            double scaled = ((double) raw[i] - minimum[i]) / ((double) maximum[i] - minimum[i]);
            x[i] = (float) Math.min(1.0, Math.max(0.0, scaled));
        }
        return x;
    }

    // --- Loading -------------------------------------------------------------------------------------

    /** Reads model.caspar and the normalisation CSV of an export folder; fails on anything unknown. */
    public static CasparModel load(Path folder) throws IOException {
        float[][] bounds = readNormalization(folder.resolve(NORMALIZATION_FILE));
        try (DataInputStream in = new DataInputStream(Files.newInputStream(folder.resolve(MODEL_FILE)))) {
            return read(in, bounds, folder.resolve(MODEL_FILE).toString());
        }
    }

    private static CasparModel read(DataInputStream in, float[][] bounds, String file) throws IOException {
        List<String[]> header = new ArrayList<>();
        for (String line = readLine(in); !line.equals("data"); line = readLine(in)) {
            header.add(line.trim().split(" +"));
        }
        String[] first = header.get(0);
        int format = first.length == 2 && first[0].equals("caspar-model") && first[1].matches("[0-9]{1,3}")
                ? Integer.parseInt(first[1]) : -1;
        if (format < OLDEST_FORMAT || format > FORMAT) {
            throw new IOException(file + ": not a caspar-model file of format " + OLDEST_FORMAT + " to " + FORMAT + " ("
                    + String.join(" ", first) + "): use the CasparModel.java exported with it");
        }
        String featureSet = null;
        int inputWidth = -1;
        boolean sigmoidOutput = false;
        List<String[]> layerLines = new ArrayList<>();
        List<Map<String, Object>> layerArrays = new ArrayList<>();
        for (String[] line : header.subList(1, header.size())) {
            switch (line[0]) {
                case "feature_set" -> featureSet = line[1];
                case "inputs" -> inputWidth = Integer.parseInt(line[1]);
                case "output" -> sigmoidOutput = switch (line[1]) {
                    case "sigmoid" -> true;
                    case "clip" -> false;
                    default -> throw new IOException(file + ": unknown output " + line[1]);
                };
                case "layer" -> {
                    layerLines.add(line);
                    layerArrays.add(new HashMap<>());
                }
                case "array" -> layerArrays.get(layerArrays.size() - 1).put(line[1], readArray(in, line[2], Integer.parseInt(line[3])));
                default -> throw new IOException(file + ": unknown line " + String.join(" ", line));
            }
        }
        if (bounds[0].length != inputWidth) {
            throw new IOException(NORMALIZATION_FILE + " has " + bounds[0].length + " features, the model " + inputWidth);
        }
        List<Layer> layers = new ArrayList<>();
        Trees trees = null;
        for (int i = 0; i < layerLines.size(); i++) {
            String[] line = layerLines.get(i);
            Map<String, Object> arrays = layerArrays.get(i);
            if (line[1].equals("trees")) {
                trees = new Trees(arrays);
            } else {
                layers.add(layer(line, arrays, file));
            }
        }
        layers = fuseEncodedInputs(layers);
        if (trees == null && !sigmoidOutput) {
            throw new IOException(file + ": output clip needs trees");
        }
        return new CasparModel(featureSet, inputWidth, bounds[0], bounds[1], layers, trees, sigmoidOutput);
    }

    private static Layer layer(String[] line, Map<String, Object> arrays, String file) throws IOException {
        int[] n = new int[line.length - 2];
        String activation = "linear";
        for (int i = 2; i < line.length; i++) {
            if (line[i].matches("-?\\d+")) {
                n[i - 2] = Integer.parseInt(line[i]);
            } else {
                activation = line[i];
            }
        }
        return switch (line[1]) {
            case "periodic" -> new Periodic(n[0], n[1], n[2], f32(arrays, "coefficients"), f32(arrays, "kernel"), f32(arrays, "bias"));
            case "piecewise" -> new Piecewise(n[0], starts(arrays, n[0], n[1]), f32(arrays, "lower"), f32(arrays, "width"));
            case "adapter" -> new Adapter(n[0], n[1], f32(arrays, "scale"));
            case "dense" -> new Dense(n[0], n[1], n[2], activation(activation, file), null, f32(arrays, "kernel"), null, f32(arrays, "bias"));
            case "batchensemble" -> new Dense(n[0], n[1], n[2], activation(activation, file), f32(arrays, "r"), f32(arrays, "kernel"),
                    f32(arrays, "s"), f32(arrays, "bias"));
            case "affine" -> new Affine(n[0], n[1], f32(arrays, "scale"), f32(arrays, "shift"));
            case "heads" -> new Heads(n[0], n[1], f32(arrays, "kernel"), f32(arrays, "bias"));
            default -> throw new IOException(file + ": unknown layer " + line[1] + " (this CasparModel.java is older than the model)");
        };
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
            if (fused.size() > next && fused.get(next) instanceof Dense dense && dense.r() == null) {
                fused.subList(0, next + 1).clear();
                fused.add(0, new EncodedDense(encoding, adapter, dense));
            }
        }
        return fused;
    }

    private static Activation activation(String name, String file) throws IOException {
        return switch (name) {
            case "linear" -> x -> x;
            case "relu" -> x -> Math.max(0f, x);
            case "sigmoid" -> CasparModel::sigmoid;
            case "tanh" -> x -> (float) Math.tanh(x);
            case "silu", "swish" -> x -> x * sigmoid(x);
            case "elu" -> x -> x > 0 ? x : (float) Math.expm1(x);
            case "gelu" -> x -> (float) (0.5 * x * (1.0 + erf(x / Math.sqrt(2.0))));
            default -> throw new IOException(file + ": unknown activation " + name);
        };
    }

    private static String readLine(DataInputStream in) throws IOException {
        StringBuilder line = new StringBuilder();
        for (int b = in.read(); b != '\n'; b = in.read()) {
            if (b < 0) {
                throw new IOException("model file ends before its data");
            }
            line.append((char) b);
        }
        return line.toString();
    }

    private static Object readArray(DataInputStream in, String type, int count) throws IOException {
        byte[] bytes = in.readNBytes(4 * count);
        if (bytes.length != 4 * count) {
            throw new IOException("model file ends inside an array");
        }
        ByteBuffer buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        if (type.equals("f32")) {
            float[] values = new float[count];
            buffer.asFloatBuffer().get(values);
            return values;
        }
        if (type.equals("i32")) {
            int[] values = new int[count];
            buffer.asIntBuffer().get(values);
            return values;
        }
        throw new IOException("unknown array type " + type);
    }

    private static float[] f32(Map<String, Object> arrays, String name) throws IOException {
        Object array = arrays.get(name);
        if (!(array instanceof float[] values)) {
            throw new IOException("missing float array " + name);
        }
        return values;
    }

    private static float[][] readNormalization(Path path) throws IOException {
        List<String> lines = Files.readAllLines(path, StandardCharsets.UTF_8);
        int width = lines.size() - 1;  // header: feature,min,max
        float[][] bounds = new float[2][width];
        for (int i = 0; i < width; i++) {
            String[] cells = lines.get(i + 1).split(",");
            if (Integer.parseInt(cells[0].trim()) != i) {
                throw new IOException(path + " line " + (i + 2) + ": expected feature " + i);
            }
            bounds[0][i] = Float.parseFloat(cells[1]);
            bounds[1][i] = Float.parseFloat(cells[2]);
        }
        return bounds;
    }

    // --- The layers ----------------------------------------------------------------------------------

    private interface Layer {
        float[] apply(float[] x);
    }

    private interface Activation {
        float apply(float x);
    }

    /** PLR-lite embedding: per input, cos and sin of 2 pi c x for K frequencies, then a shared dense + ReLU. */
    private record Periodic(int features, int frequencies, int dimension, float[] coefficients, float[] kernel, float[] bias)
            implements Layer {
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
    private static int[] starts(Map<String, Object> arrays, int features, int bins) throws IOException {
        if (!(arrays.get("start") instanceof int[] start) || start.length != features + 1 || start[0] != 0
                || start[features] != bins) {
            throw new IOException("piecewise encoding: expected an int array start of " + (features + 1)
                    + " values from 0 to " + bins);
        }
        for (int j = 0; j < features; j++) {
            if (start[j + 1] <= start[j]) {
                throw new IOException("piecewise encoding: input " + j + " has no bin");
            }
        }
        return start;
    }

    /** Piecewise-linear encoding: per input and bin, how far the input has gone through the bin. */
    private record Piecewise(int features, int[] start, float[] lower, float[] width) implements Layer {
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

        Trees(Map<String, Object> arrays) throws IOException {
            roots = i32(arrays, "roots");
            feature = i32(arrays, "feature");
            threshold = f32(arrays, "threshold");
            left = i32(arrays, "left");
            right = i32(arrays, "right");
            value = f32(arrays, "value");
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

        private static int[] i32(Map<String, Object> arrays, String name) throws IOException {
            Object array = arrays.get(name);
            if (!(array instanceof int[] values)) {
                throw new IOException("missing int array " + name);
            }
            return values;
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

    // --- From a shell ------------------------------------------------------------------------------

    /**
     * {@code java CasparModel.java FOLDER < rows.csv}: one prediction per line of comma-separated raw
     * features (a header line that is not numbers is skipped). {@code --benchmark}: median time per
     * call at batch 1 and per batch of 256, on this thread, after a warm-up, on the folder's
     * test_inputs.csv rows.
     */
    public static void main(String[] args) throws IOException {
        if (args.length < 1) {
            System.err.println("usage: java CasparModel.java EXPORT_FOLDER [--benchmark] < rows.csv");
            System.exit(2);
        }
        CasparModel model;
        try {
            model = load(Path.of(args[0]));
        } catch (IOException | RuntimeException error) {
            System.err.println("CasparModel: cannot load " + args[0] + ": " + error.getMessage());
            System.exit(2);
            return;
        }
        if (args.length > 1 && args[1].equals("--benchmark")) {
            benchmark(model, Path.of(args[0]));
            return;
        }
        StringBuilder out = new StringBuilder();
        BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        int number = 0;
        for (String line = reader.readLine(); line != null; line = reader.readLine()) {
            number++;
            if (line.isBlank() || (number == 1 && !line.trim().matches("^[-+0-9.eE, ]+$"))) {
                continue;
            }
            String[] cells = line.split(",");
            float[] row = new float[model.inputWidth()];
            if (cells.length < row.length) {
                System.err.println("line " + number + ": " + cells.length + " values, the model takes " + row.length);
                System.exit(2);
            }
            for (int i = 0; i < row.length; i++) {
                row[i] = Float.parseFloat(cells[i].trim());
            }
            out.append(model.predict(row)).append('\n');
        }
        System.out.print(out);
    }

    /** Times predict on the export's test_inputs.csv rows (real moves), 256 of them. */
    private static void benchmark(CasparModel model, Path folder) throws IOException {
        List<String> lines = Files.readAllLines(folder.resolve("test_inputs.csv"), StandardCharsets.UTF_8);
        float[][] rows = new float[256][model.inputWidth()];
        for (int r = 0; r < rows.length; r++) {
            String[] cells = lines.get(1 + r % (lines.size() - 1)).split(",");
            for (int i = 0; i < model.inputWidth(); i++) {
                rows[r][i] = Float.parseFloat(cells[i]);
            }
        }
        float sink = 0;
        long warmUpEnds = System.nanoTime() + 1_500_000_000L;  // the JIT compiles the hot loops
        for (int i = 0; i < 20000 && (i < 200 || System.nanoTime() < warmUpEnds); i++) {
            sink += model.predict(rows[i % 256]);
        }
        double[] single = new double[500];
        for (int i = 0; i < single.length; i++) {
            long started = System.nanoTime();
            sink += model.predict(rows[i % 256]);
            single[i] = (System.nanoTime() - started) / 1e6;
        }
        double[] batch = new double[5];
        for (int i = 0; i < batch.length; i++) {
            long started = System.nanoTime();
            sink += model.predict(rows)[0];
            batch[i] = (System.nanoTime() - started) / 1e6;
        }
        System.out.println("batch1_ms " + median(single));
        System.out.println("batch256_ms " + median(batch));
        if (Float.isNaN(sink)) {
            System.out.println("nan");
        }
    }

    private static double median(double[] values) {
        double[] sorted = values.clone();
        Arrays.sort(sorted);
        return sorted[sorted.length / 2];
    }
}
