"""The features in MegaMek's Java (java/src/caspar/CasparFeatures.java) against ours: every feature of
every row within 1e-6, named by game, move and feature where one differs; then the score, Java
features through CasparModel against our features through the Keras model, within 1e-5.

`pytest -k java_feature_parity` selects these; the corpus test reads the logs of CASPAR_GAMELOGS."""
import dataclasses
import re

import numpy as np
import pyarrow as pa
from conftest import GAMELOGS, ROOT, needs_shared_logs

from caspar.config import Hyperparameters
from caspar.data.features import feature_names, load_unit_points, schema
from caspar.data.gamelog import read_log
from caspar.data.gamelog.reader import read_game
from caspar.data.gamelog.writer import rewrite
from caspar.data.logfiles import find_logs
from caspar.data.samples import game_log
from caspar.export import javafeatures, javamodel
from caspar.export.formats import TOLERANCE
from caspar.model.network import Normalizer, build_network, fit_trees

POINTS = load_unit_points()
NAMES = feature_names()
FEATURE_TOLERANCE = 1e-6


def with_random_ecm(log, seed: int):
    """The log with HAS_ECM drawn at random in its state rows: the corpus's logger wrote none, today's does."""
    rng = np.random.default_rng(seed)
    states = log.states
    column = pa.array(rng.integers(0, 2, states.num_rows).astype(np.float64))
    index = states.column_names.index("HAS_ECM") if "HAS_ECM" in states.column_names else -1
    states = states.set_column(index, "HAS_ECM", column) if index >= 0 else states.append_column("HAS_ECM", column)
    return dataclasses.replace(log, states=states)


def java_and_python(logs, folder, classes) -> tuple[list[tuple[str, int]], np.ndarray, dict]:
    """The decisions of `logs` written to folder/decisions.tsv, their features in Java, and ours by
    (game, move index)."""
    path = folder / "decisions.tsv"
    expected = javafeatures.write_decisions_file(logs, str(path), POINTS)
    keys = javafeatures.decision_keys(str(path))
    java = javafeatures.features_in_java(str(path), str(folder / "features.f32"), classes)
    assert java.shape == (len(keys), len(NAMES))
    return keys, java, expected


def differences(keys, java, expected) -> tuple[int, list[str]]:
    """Rows compared, and one line per feature value more than 1e-6 from ours."""
    compared, lines = 0, []
    for key, values in zip(keys, java):
        if key not in expected:  # a move our features skip (a value missing); not a row of the dataset
            continue
        compared += 1
        ours = expected[key].astype(np.float32)
        for i in np.flatnonzero(~(np.abs(values.astype(np.float64) - ours) <= FEATURE_TOLERANCE)):
            lines.append(f"{key[0]} move {key[1]} {NAMES[i]}: Java {values[i]!r}, Python {ours[i]!r}")
    return compared, lines


def test_the_java_feature_set_is_the_schemas():
    source = (javamodel.SOURCES + "/caspar/CasparFeatures.java")
    declared = re.search(r'FEATURE_SET = "([^"]+)"', open(source).read()).group(1)
    assert declared == schema()["version"], "CasparFeatures.java is not feature set " + schema()["version"]
    assert re.search(r"WIDTH = (\d+);", open(source).read()).group(1) == str(schema()["width"])


def test_java_feature_parity_in_every_layout_on_synthetic_games(classes, tmp_path):
    """Synthetic games in the old layout and rewritten as today's logger writes them (per-arc armour,
    CHANCE_OF_FAILURE, HAS_ECM, here drawn at random so the ECM features vary)."""
    logs = []
    for seed in range(6):
        text = game_log(seed, second_game=seed == 3, decimal_comma=seed == 4).encode()
        logs.append(read_log(text, f"old-{seed}"))
        for layout in ("versioned", "split"):
            logs.append(with_random_ecm(read_game(rewrite(text, layout), f"{layout}-{seed}"), seed))
    keys, java, expected = java_and_python(logs, tmp_path, classes)
    compared, lines = differences(keys, java, expected)
    assert compared == len(expected) > 100 and not lines, "\n".join(lines[:10])
    ecm = [NAMES.index("ecm_coverage"), NAMES.index("enemy_ecm_coverage")]
    assert all(np.ptp(java[:, i]) > 0 for i in ecm)  # the ECM features were exercised


# Fields a rule stands in for when missing (FEATURES.md; the reader takes a non-finite number as missing)
FALLBACK_STATE_FIELDS = ["MAX_RANGE", "TOTAL_DAMAGE", "HAS_ECM", "ROLE", "MP", *javafeatures.ARCS, "ARMOR_P", "INTERNAL_P"]
FALLBACK_MOVE_FIELDS = ["TEAM_ID", "HEXES_MOVED", "DISTANCE", "MP_USED", "MAX_MP", "MP_P", "HEAT_P", "ARMOR_P",
                        "INTERNAL_P", "CHANCE_OF_FAILURE", *javafeatures.ARCS]


def damaged(log, seed: int):
    """The log with about a third of the cells of the fields above missing (NaN; ROLE empty)."""
    rng = np.random.default_rng(seed)

    def damage(table, fields):
        for field in fields:
            if field not in table.column_names:
                continue
            lost = rng.random(table.num_rows) < 0.35
            column = table[field]
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                values = pa.array([None if gone else v for v, gone in zip(column.to_pylist(), lost)], column.type)
            else:
                values = pa.array(np.where(lost, np.nan, column.to_numpy(zero_copy_only=False).astype(np.float64)))
            table = table.set_column(table.column_names.index(field), field, values)
        return table

    return dataclasses.replace(log, states=damage(log.states, FALLBACK_STATE_FIELDS),
                               moves=damage(log.moves, FALLBACK_MOVE_FIELDS))


def test_damaged_records_fall_back_as_ours_or_are_refused_by_name(classes, tmp_path):
    """Where a rule stands in for a missing value, Java computes what we compute, on every row, with
    the missing cells written as NaN, Infinity or -Infinity (a non-finite number is missing, as the
    log reader takes it); what no rule can stand in for (the board's size, the mover's HEAT, a unit's
    ARMOR or INTERNAL) is refused in one line naming the decision's line and the field, never NaN."""
    import subprocess

    logs = [damaged(with_random_ecm(read_game(rewrite(game_log(seed).encode(), "split"), f"damaged-{seed}"), seed), seed)
            for seed in range(3)]
    path = tmp_path / "decisions.tsv"
    expected = javafeatures.write_decisions_file(logs, str(path), POINTS)
    keys = javafeatures.decision_keys(str(path))
    assert len(expected) == len(keys) > 30  # every move a row: a fallback, not a skip
    spellings = iter(["Infinity", "-Infinity", "NaN"] * len(path.read_text()))
    text = re.sub(r"(?<=\t)NaN(?=\t|\n)", lambda _: next(spellings), path.read_text())
    assert "\t-Infinity" in text and "\tInfinity" in text
    path.write_text(text)
    java = javafeatures.features_in_java(str(path), str(tmp_path / "features.f32"), classes)
    compared, lines = differences(keys, java, expected)
    assert compared == len(keys) and not lines, f"{len(lines)} values differ:\n" + "\n".join(lines[:10])

    def first_decision_with(line_kind: str, field: str, value: str, board: str | None = None) -> str:
        """The file's header and first decision, one field of its `line_kind` record set to `value`."""
        lines = text.splitlines()
        fields = {ln.split("\t")[1]: ln.split("\t")[2:] for ln in lines if ln.startswith("fields\t")}
        head = [ln for ln in lines if not ln.startswith(("decision", "action", "mover", "unit"))]
        start = next(i for i, ln in enumerate(lines) if ln.startswith("decision"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("decision"))
        record = lines[start:end]
        if board:
            cells = record[0].split("\t")
            record[0] = "\t".join(cells[:3] + board.split("x") + cells[5:])
        for i, ln in enumerate(record):
            cells = ln.split("\t")
            if cells[0] == line_kind and field:
                cells[1 + fields["action" if line_kind == "action" else "unit"].index(field)] = value
                record[i] = "\t".join(cells)
                break
        return "\n".join(head + record) + "\n", len(head) + 1

    for kind, field, value, board, words in (("mover", "HEAT", "NaN", None, "the mover's record has no finite HEAT"),
                                             ("unit", "ARMOR", "Infinity", None, "record has no finite ARMOR"),
                                             ("mover", "INTERNAL", "NaN", None, "the mover's record has no finite INTERNAL"),
                                             ("action", "", "", "0x0", "the board is 0 x 0 hexes")):
        content, line = first_decision_with(kind, field, value, board)
        (tmp_path / "bad.tsv").write_text(content)
        result = subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "features", str(tmp_path / "bad.tsv"),
                                 str(tmp_path / "bad.f32")], capture_output=True, text=True, timeout=60)
        message = result.stderr.strip()
        assert result.returncode == 2 and "\n" not in message and f"bad.tsv line {line} (" in message, message
        assert words in message, message


def small_model(features: np.ndarray, reward: np.ndarray):
    """A model with trees and a network (TabM-mini, piecewise-linear encoding) fitted on these rows."""
    normalizer = Normalizer.fit(features)
    x = normalizer.transform(features)
    hp = Hyperparameters(hidden_layers=[16], trees=10, ensemble_size=4, encoding_bins=4, seed=0)
    model = build_network(hp, x, fit_trees(x, reward, hp)).model
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, reward, epochs=1, batch_size=256, verbose=0)
    return model, normalizer


@needs_shared_logs()
def test_java_feature_parity_on_every_game_of_the_corpus_and_the_score(classes, tmp_path):
    """Every row of every game of CASPAR_GAMELOGS, and about one game in three again as today's split
    layout writes it with HAS_ECM drawn at random; then the model's score from the Java features."""
    inputs = find_logs(str(GAMELOGS))
    logs = []
    for name, paths in sorted(inputs.games.items()):
        files = {path.rsplit("/", 1)[-1]: open(path, "rb").read() for path in paths}
        log = read_game(files, name)
        logs.append(log)
        if len(files) == 1 and len(logs) % 6 == 1:  # about one game in three, also as today's split layout writes it
            logs.append(with_random_ecm(read_game(rewrite(files[next(iter(files))], "split"), "split-" + name), 0))
    keys, java, expected = java_and_python(logs, tmp_path, classes)
    compared, lines = differences(keys, java, expected)
    assert compared == len(expected) > 0 and not lines, f"{len(lines)} values differ:\n" + "\n".join(lines[:10])

    rows = [k for k in keys if k in expected]
    features = np.array([expected[k] for k in rows], np.float32)
    model, normalizer = small_model(features, features[:, 13] * 0.5 + features[:, 44] * 0.3)
    export = tmp_path / "export"
    export.mkdir()
    normalizer.write_csv(str(export / "min_max_feature_normalization.csv"))
    javamodel.write(model, str(export / javamodel.MODEL_FILE), schema()["version"])
    keras = model.predict(normalizer.transform(features), batch_size=4096, verbose=0).reshape(-1)
    scores = javafeatures.scores_in_java(str(export), str(tmp_path / "decisions.tsv"), str(tmp_path / "s.f32"), classes)
    java_scores = np.array([s for k, s in zip(keys, scores) if k in expected])
    assert np.ptp(keras) > 0 and np.max(np.abs(java_scores - keras)) <= TOLERANCE


# --- The README's Java, as written ---------------------------------------------------------------------

STUBS = {  # the logger's classes as MegaMek declares them (megamek.ai.dataset), reduced to what the README uses
    "megamek/ai/dataset/EntityDataMap.java": """package megamek.ai.dataset;
public abstract class EntityDataMap<F extends Enum<F>> {
    private final Class<F> fieldEnumClass;
    private final java.util.Map<F, Object> data;
    protected EntityDataMap(Class<F> fieldEnumClass) {
        this.fieldEnumClass = fieldEnumClass;
        data = new java.util.EnumMap<>(fieldEnumClass);
    }
    public EntityDataMap<F> put(F field, Object value) { data.put(field, value); return this; }
    public Object get(F field) { return data.get(field); }
    public Class<F> getFieldEnumClass() { return fieldEnumClass; }
}""",
    "megamek/ai/dataset/UnitAction.java": """package megamek.ai.dataset;
public class UnitAction extends EntityDataMap<UnitAction.Field> {
    public enum Field { ID, TEAM_ID, PLAYER_ID, FACING, FROM_X, FROM_Y, TO_X, TO_Y, HEXES_MOVED, MP_USED, MAX_MP, JUMPING }
    public UnitAction() { super(Field.class); }
    public static UnitAction fromMovePath(megamek.common.moves.MovePath path) {
        UnitAction map = new UnitAction();
        map.put(Field.ID, 1).put(Field.TEAM_ID, 1).put(Field.TO_X, 3).put(Field.TO_Y, 4).put(Field.JUMPING, true);
        return map;
    }
}""",
    "megamek/ai/dataset/UnitState.java": """package megamek.ai.dataset;
public class UnitState extends EntityDataMap<UnitState.Field> {
    public enum Field { ID, TEAM_ID, PLAYER_ID, TYPE, ROLE, X, Y, HEAT, MAX_RANGE, TOTAL_DAMAGE, ARMOR, INTERNAL }
    public UnitState() { super(Field.class); }
    public static UnitState fromEntity(megamek.common.units.Entity entity, megamek.common.game.Game game) {
        UnitState map = new UnitState();
        map.put(Field.ID, entity.id).put(Field.TEAM_ID, entity.id % 2).put(Field.X, entity.id).put(Field.Y, 2)
           .put(Field.TYPE, "BipedMek").put(Field.HEAT, 3).put(Field.MAX_RANGE, 9).put(Field.TOTAL_DAMAGE, 30).put(Field.ARMOR, 100)
           .put(Field.INTERNAL, 50);
        return map;
    }
}""",
    # MegaMek's main line (2026): units, game, board and moves in packages of their own; a game of
    # several boards has no getBoard() without an id (the legacy call answered board 0 whatever the path)
    "megamek/common/units/Entity.java": "package megamek.common.units; public class Entity { public final int id; "
                                        "public Entity(int id) { this.id = id; } }",
    "megamek/common/board/Board.java": "package megamek.common.board; public class Board { private final int id; "
                                       "public Board(int id) { this.id = id; } public int getWidth() { return 16 + id; } "
                                       "public int getHeight() { return 17; } }",
    "megamek/common/game/Game.java": "package megamek.common.game; import megamek.common.units.Entity; "
                                     "import megamek.common.board.Board; public class Game { "
                                     "public java.util.List<Entity> getEntitiesVector() "
                                     "{ return java.util.List.of(new Entity(1), new Entity(2), new Entity(3)); } "
                                     "public Board getBoard(int boardId) { return new Board(boardId); } }",
    "megamek/common/moves/MovePath.java": "package megamek.common.moves; import megamek.common.units.Entity; "
                                          "public class MovePath { public Entity getEntity() { return new Entity(1); } "
                                          "public int getFinalBoardId() { return 1; } }",
}


def readme_java_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Putting a model into MegaMek"):]
    block = section.split("```java\n", 1)[1].split("```", 1)[0]
    return "\n".join(line[3:] if line.startswith("   ") else line for line in block.splitlines())


def test_the_readme_megamek_adapter_compiles_and_scores(classes, tmp_path):
    """The README's bot code, compiled with the Java package against the logger's classes (their
    signatures as MegaMek declares them) and run on a model export: it scores a path."""
    import subprocess

    block = readme_java_block()
    imports = [line for line in block.splitlines() if line.startswith("import ")]
    body = "\n".join(line for line in block.splitlines() if not line.startswith("import "))
    method_end = body.index("\n}\n") + 3  # the adapter method ends at the first closing brace of column 0
    for path, text in STUBS.items():
        (tmp_path / "src" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / path).write_text(text)
    bot = ["package bot;", *imports, "import java.nio.file.Path;", "import java.util.ArrayList;", "import java.util.List;",
           "public class Bot {", body[:method_end],
           "static float score(Game game, MovePath path) throws java.io.IOException {", body[method_end:],
           "return reward; }",
           "public static void main(String[] args) throws Exception { System.out.println(score(new Game(), new MovePath())); } }"]
    (tmp_path / "src" / "bot").mkdir()
    (tmp_path / "src" / "bot" / "Bot.java").write_text("\n".join(bot))
    sources = [str(p) for p in (tmp_path / "src").rglob("*.java")] + javamodel.source_files()
    compiled = subprocess.run(["javac", "--release", "17", "-d", str(tmp_path / "out"), *sources], capture_output=True,
                              text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    export = tmp_path / "data" / "ai" / "brains" / "model-v1"
    export.mkdir(parents=True)
    tiny_export(export, schema()["version"])
    ran = subprocess.run(["java", "-cp", str(tmp_path / "out"), "bot.Bot"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0 and 0.0 <= float(ran.stdout) <= 1.0, ran.stderr


def tiny_export(folder, feature_set: str) -> None:
    """An export of a small trees model of the full feature width: model.caspar, the normalisation and test_inputs.csv."""
    from caspar.artifacts import write_test_inputs
    from caspar.model.network import trees_model

    rng = np.random.default_rng(0)
    raw = rng.random((200, len(NAMES))).astype(np.float32)
    reward = (0.5 * raw[:, 0] + 0.2 * (raw[:, 1] > 0.5)).astype(np.float32)
    normalizer = Normalizer.fit(raw)
    model = trees_model(fit_trees(normalizer.transform(raw), reward, Hyperparameters(trees=10, seed=0)), len(NAMES))
    normalizer.write_csv(str(folder / "min_max_feature_normalization.csv"))
    write_test_inputs(str(folder / "test_inputs.csv"), raw, model.predict(normalizer.transform(raw), verbose=0).reshape(-1))
    javamodel.write(model, str(folder / javamodel.MODEL_FILE), feature_set)


def test_the_readme_java_check_runs_as_written_from_the_repository_root(classes, tmp_path):
    """The README's shell block (compile the package, CasparTool predict on an export's test_inputs.csv)
    in a copy of the repository's java/ beside an export at exports/model-v1."""
    import shutil
    import subprocess

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Putting a model into MegaMek"):]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    shutil.copytree(ROOT / "java", tmp_path / "java")
    (tmp_path / "exports" / "model-v1").mkdir(parents=True)
    tiny_export(tmp_path / "exports" / "model-v1", "v1-test")
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
    recorded = np.loadtxt(tmp_path / "exports" / "model-v1" / "test_inputs.csv", delimiter=",", skiprows=1)[:, -1]
    np.testing.assert_allclose(np.array(result.stdout.split(), float), recorded, atol=TOLERANCE)


def test_the_java_tool_names_a_malformed_input_in_one_line(classes, tmp_path):
    """A decisions file with a cut line, and an export whose test_inputs.csv has a header only: one
    line naming the file and line, exit 2, no stack trace (CasparTool's promise)."""
    import subprocess

    path = tmp_path / "decisions.tsv"
    javafeatures.write_decisions_file([read_log(game_log(1).encode(), "g1")], str(path), POINTS)
    lines = path.read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("decision\t"))
    lines[cut] = "decision\tg1"  # its move and the board's size are missing
    path.write_text("\n".join(lines) + "\n")

    def tool(*args):
        return subprocess.run(["java", "-cp", classes, "caspar.CasparTool", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    result = tool("features", path, tmp_path / "out.f32")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "\tat " not in result.stderr, result.stderr
    assert f"{path} line {cut + 1}: a decision line needs at least 5" in result.stderr
    export = tmp_path / "export"
    export.mkdir()
    tiny_export(export, schema()["version"])
    header = (export / "test_inputs.csv").read_text().splitlines()[0]
    (export / "test_inputs.csv").write_text(header + "\n")
    result = tool("benchmark", export)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no rows after the header" in result.stderr, \
        result.stderr
