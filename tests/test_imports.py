"""The package's import structure: imports flow one way (no cycle among reptile_tf's modules), are
written at module level (only the CLI loads its subcommands lazily), and the modules that
Snakemake and `--help` load stay free of TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reptile_tf"
# Subcommand modules are imported on demand (`reptile-tf fetch` must not pay for TensorFlow).
LAZY_LOADERS = {"reptile_tf.cli"}
# Read by the workflow (Snakemake) and by `--help` paths without TensorFlow.
TF_FREE = ("reptile_tf.settings", "reptile_tf.cost", "reptile_tf.tables", "reptile_tf.rundir", "reptile_tf.flag_help",
           "reptile_tf.progress", "reptile_tf.io", "reptile_tf.errors", "reptile_tf.stats", "reptile_tf.curves",
           "reptile_tf.seeds", "reptile_tf.datasets")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_script_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (runs only as a program) or `if TYPE_CHECKING:` (never runs)."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    return test in ("__name__ == '__main__'", "TYPE_CHECKING", "typing.TYPE_CHECKING")


def _own_imports(node: ast.AST, module: str) -> list[str]:
    """The reptile_tf modules an import statement loads (`from reptile_tf import x` names module x
    when x is one, else the package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "reptile_tf"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "reptile_tf":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def module_level_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if _is_script_block(node):
                continue
            found.update(_own_imports(node, module))
            for field in ("body", "orelse", "finalbody", "handlers"):  # module-level if/try blocks
                children = getattr(node, field, None)
                if children and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit([c for c in children if isinstance(c, ast.stmt)] if field != "handlers"
                          else [s for h in children for s in h.body])

    visit(tree.body)
    return {name for name in found if name in MODULES and name != module}


def test_own_imports_are_at_module_level():
    late = []
    for module, path in MODULES.items():
        if module in LAZY_LOADERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late += [f"{path.relative_to(PACKAGE.parent)}:{inner.lineno} {ast.unparse(inner)}"
                         for inner in ast.walk(node) if _own_imports(inner, module)]
    assert not late, "imports of reptile_tf modules inside functions:\n" + "\n".join(sorted(set(late)))


def test_no_import_cycle():
    graph = {module: module_level_imports(module) for module in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_the_stages():
    """A guard on the test itself: known one-way edges are found."""
    assert "reptile_tf.scoring" in module_level_imports("reptile_tf.evaluate")
    assert "reptile_tf.scoring" in module_level_imports("reptile_tf.train")
    assert "reptile_tf.train" not in module_level_imports("reptile_tf.evaluate")
    assert "reptile_tf.rundir" in module_level_imports("reptile_tf.theory.combinations")
    assert "reptile_tf.rundir" in module_level_imports("reptile_tf.tables")
    assert "reptile_tf.tables" not in module_level_imports("reptile_tf.tracking")


def test_workflow_and_help_modules_do_not_import_tensorflow():
    code = (f"import sys\nimport {', '.join(TF_FREE)}\n"
            "heavy = sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_commands_are_leaves():
    """Training and evaluation are stages at the end of the flow: only the CLI loads them, so a
    helper another stage needs (a config diff, a reader) lives below them, not in them."""
    commands = ("reptile_tf.train", "reptile_tf.evaluate")
    importers = sorted(f"{module} -> {target}" for module in MODULES if module not in LAZY_LOADERS
                       for target in module_level_imports(module) if target in commands)
    assert not importers, "modules importing a command module:\n" + "\n".join(importers)
