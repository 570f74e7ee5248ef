"""The shape of the code: the stages of the pipeline as packages, no import running back up."""
import ast
import re

from conftest import ROOT

STAGES = ["data", "model", "training", "tuning", "export"]  # in pipeline order; the shared modules sit above them


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("caspar.")}


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_no_module_imports_from_a_later_stage_and_shared_modules_from_none():
    found = []
    for path in sorted((ROOT / "caspar").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = stage_of(module)
        if module == "caspar.__init__":  # the public functions (prepare, train, ...): above every stage, as the jobs are
            continue
        for name in imported_modules(path):
            other = stage_of(name)
            if other is not None and (own is None or other > own):
                found.append(f"{module} imports {name}")
    assert not found, "\n".join(found)


def test_every_module_is_in_a_stage_or_shared():
    top = {path.stem for path in (ROOT / "caspar").glob("*.py")}
    assert top == {"__init__", "errors", "config", "storage", "tracking", "artifacts", "cli", "progress", "runtime"}, top
    assert {path.name for path in (ROOT / "caspar").iterdir() if path.is_dir() and path.name != "__pycache__"} == set(STAGES)


def test_every_source_file_is_tracked():
    """A source file that git ignores is missing from every clone and from what `ray job submit
    --working-dir .` ships (a `data/` pattern once hid caspar/data/)."""
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", *map(str, (ROOT / "caspar").rglob("*.py")), *map(
        str, (ROOT / "java").rglob("*.java"))], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not ignored, ignored


def test_the_library_never_imports_the_command_line_shell():
    """caspar.cli is the jobs' shell (arguments, exit codes, what reaches the terminal): the library
    below it is used from notebooks too, and must not depend on it."""
    users = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "caspar").rglob("*.py"))
             if path.name != "cli.py" and any(name == "caspar.cli" or name.startswith("caspar.cli.")
                                              for name in imported_modules(path))]
    assert not users, users


def test_the_library_prints_nothing_itself():
    """What the library says goes to its loggers (caspar.*): the jobs' shell prints it, a notebook
    sees it only if it asks. A module's own command line (`if __name__ == "__main__":`) may print."""
    found = []
    for path in sorted((ROOT / "caspar").rglob("*.py")):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        mains = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        allowed = {id(inner) for main in mains for inner in ast.walk(main)}
        found += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
                  and id(node) not in allowed]
    assert not found, found


# Every module of the library: its public functions and classes carry Google-style docstrings
# (Args, Returns, Raises; array shapes in them).
DOCUMENTED = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "caspar").rglob("*.py"))


# Methods a framework calls (Ray Tune's callbacks, schedulers and Trainable, Keras's layers and
# callbacks, MLflow's PythonModel): their contract is the framework's documentation.
FRAMEWORK_HOOKS = re.compile(r"^(on_\w+|debug_string|set_search_properties|setup|step|save_checkpoint|load_checkpoint|"
                             r"reset_config|cleanup|call|build|get_config|from_config|compute_output_shape|"
                             r"load_context|predict)$")


def test_documented_modules_say_what_every_public_function_takes_and_returns():
    import ast

    missing = []
    for name in DOCUMENTED:
        tree = ast.parse((ROOT / name).read_text())
        public = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        # a module's functions and classes, and the methods of its public classes
        public += [method for node in public if isinstance(node, ast.ClassDef) for method in node.body
                   if isinstance(method, ast.FunctionDef) and not node.name.startswith("_")]
        for node in public:
            if node.name.startswith("_") or (node not in tree.body and FRAMEWORK_HOOKS.match(node.name)):
                continue
            if any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "feature" for d in node.decorator_list):
                continue  # a registered feature: its description= is its documentation (caspar.data.features.registry)
            doc = ast.get_docstring(node) or ""
            if not doc:
                missing.append(f"{name}: {node.name} has no docstring")
                continue
            if isinstance(node, ast.ClassDef):
                continue
            arguments = [a.arg for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
            arguments += [node.args.kwarg.arg] if node.args.kwarg else []
            returns = not (isinstance(node.returns, ast.Constant) and node.returns.value is None)
            if arguments and "Args:" not in doc:
                missing.append(f"{name}: {node.name} does not say its arguments (Args:)")
            if arguments and returns and "Returns:" not in doc and "Yields:" not in doc:
                missing.append(f"{name}: {node.name} does not say what it returns (Returns:)")
    assert not missing, "\n".join(missing)
