"""The house rules that a reader relies on, checked on every run from the code's own imports (module level and
inside functions): imports only run down the layers that rlt_ray/__init__.py lists (LAYERS), no import circle
exists between modules, and the code is pyflakes-clean (no unused imports or names, no undefined ones)."""
import ast
import pathlib

from rlt_ray import LAYERS

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("rlt_ray", "actors", "jobs", "serve")


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def _imports(path: pathlib.Path, modules=None) -> set[str]:
    """The project's modules that ``path`` imports anywhere (``from a.b import c`` counts a.b, and a.b.c when
    that is a module)."""
    modules = MODULES if modules is None else modules
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {_module(path)} if path.is_relative_to(ROOT) else found


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    assert not [m for m in MODULES if m != "rlt_ray" and _layer(m) is None]


def test_imports_only_run_down_the_layers():
    up = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                if m != "rlt_ray" and t != "rlt_ray" and _layer(t) > _layer(m))
    assert not up, f"imports that run back up the layers (rlt_ray.LAYERS): {up}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_circle():
    assert not _cycles(GRAPH), [" -> ".join(c) for c in _cycles(GRAPH)]


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jobs.train_rlt import main\n    import actors.rollout\n")
    assert _imports(bad) == {"jobs.train_rlt", "actors.rollout"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert not _cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}})


def test_the_code_is_pyflakes_clean():
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter
    import io

    out, err = io.StringIO(), io.StringIO()
    dirs = [str(ROOT / d) for d in (*PACKAGES, "tests", "bench", "scripts")]
    count = checkRecursive(dirs, Reporter(out, err))
    assert count == 0, out.getvalue() + err.getvalue()


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
# what is still over the limits, named: the list may only shrink (a fixed entry must leave it, a new one fails)
KNOWN_LONG: set[str] = set()


def _long_things() -> dict[str, str]:
    """Modules over MAX_MODULE_LINES whose docstring does not say they are one idea, and functions over
    MAX_FUNCTION_LINES: name -> its docstring's first line (modules) or ""."""
    found = {}
    for module, path in MODULES.items():
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree) or ""
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES and "One idea" not in doc:
            found[rel] = doc.splitlines()[0] if doc else ""

        def walk(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if child.end_lineno - child.lineno + 1 > MAX_FUNCTION_LINES:
                        found[f"{rel}::{prefix}{child.name}"] = ""
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")
        walk(tree)
    return found


def test_modules_and_functions_stay_short_or_say_why():
    long = _long_things()
    assert not set(long) - KNOWN_LONG, f"over {MAX_MODULE_LINES} lines (a module not declared one idea) or " \
                                       f"{MAX_FUNCTION_LINES} (a function): {sorted(set(long) - KNOWN_LONG)}"
    assert not KNOWN_LONG - set(long), f"no longer long: take them off KNOWN_LONG: {sorted(KNOWN_LONG - set(long))}"
