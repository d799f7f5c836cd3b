"""The house rules that a reader relies on, checked on every run: imports only run down the layers
(rlt_ray <- actors <- jobs; serve -> rlt_ray; jobs may drive serve), and the code is pyflakes-clean
(no unused imports or names, no undefined ones)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("rlt_ray", "actors", "jobs", "serve")
# What each package may import from the others (itself always).
ALLOWED = {"rlt_ray": set(), "actors": {"rlt_ray"}, "serve": {"rlt_ray"}, "jobs": {"rlt_ray", "actors", "serve"}}


def _imported_packages(path: pathlib.Path) -> set[str]:
    """Our top-level packages that `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_only_run_down_the_layers(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    wrong = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) - ALLOWED[package] - {package}) for p in files}
    assert not {k: v for k, v in wrong.items() if v}, f"imports that run back up the layers: {wrong}"


def test_the_layering_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jobs.train_rlt import main\n    import actors.rollout\n")
    assert _imported_packages(bad) == {"jobs", "actors"}


def test_the_code_is_pyflakes_clean():
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter
    import io

    out, err = io.StringIO(), io.StringIO()
    dirs = [str(ROOT / d) for d in (*PACKAGES, "tests", "bench", "scripts")]
    count = checkRecursive(dirs, Reporter(out, err))
    assert count == 0, out.getvalue() + err.getvalue()
