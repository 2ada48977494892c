"""The architecture contract: every import points down, no cycles, small modules and functions.

Layers, top to bottom (a module may import its own layer's modules and any lower layer's):

    cli          vitrina.cli, vitrina.__main__, the package root (its public names load lazily)
    api          vitrina.api: the public functions the CLI and the server call
    serving      the HTTP server, the moderation log
    quality      `vitrina clean`
    training     the training loop, its plan, the train-evaluate-report pipeline, compare, tune
    evaluation   metrics, evaluation folders and their pages
    export       ONNX export and its checks; opening a run folder for prediction
    inference    predictors over ONNX Runtime or PyTorch, catalogue prediction, the decision rule
    models       the registry, networks, checkpoints, the unknown-photo score, the neighbour vote
    data         dataset forms, splits, decoding, caches, inspection
    leaves       config, errors, preprocess, plots, html, artifact, description, version

An import inside a function is allowed only where it keeps a heavy optional dependency (PyTorch
on the ONNX-only prediction path, Ray, PostgreSQL drivers) off a light path, and says so with a
``# lazy: <reason>`` comment on the line above it or on its own line.

Run ``python tests/test_architecture.py`` to print every violation at once.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vitrina"
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("vitrina.cli", "vitrina.__main__", "vitrina")),
    ("api", ("vitrina.api",)),
    ("serving", ("vitrina.serving",)),
    ("quality", ("vitrina.quality",)),
    ("training", ("vitrina.training",)),
    ("evaluation", ("vitrina.evaluation",)),
    ("export", ("vitrina.export",)),
    ("inference", ("vitrina.inference",)),
    ("models", ("vitrina.models",)),
    ("data", ("vitrina.data",)),
    ("leaves", ("vitrina.config", "vitrina.errors", "vitrina.preprocess", "vitrina.plots", "vitrina.html",
                "vitrina.artifact", "vitrina.description", "vitrina.version")),
]
LAZY_MARK = "# lazy:"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100
# Argument-parser construction is a long list of declarations, not logic.
LONG_FUNCTIONS_ALLOWED = ("build_parser",)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported vitrina module
    line: int
    in_function: bool
    marked_lazy: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "vitrina" and module.startswith(prefix + "."))
            if matches and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{module} is in no layer of the contract; add it to LAYERS")
    return index


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return inside


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    inside = _function_nodes(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            name = _resolve(module, node, path.name == "__init__.py")
            if not name or not (name == "vitrina" or name.startswith("vitrina.")):
                continue
            for alias in node.names:
                full = f"{name}.{alias.name}"
                targets.append(full if full in modules else name)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name == "vitrina" or alias.name.startswith("vitrina.")]
        if not targets:
            continue
        for target in dict.fromkeys(targets):
            found.append(Import(module, target, node.lineno, id(node) in inside, _marked_lazy(lines, node.lineno)))
    return found


def _marked_lazy(lines: list[str], lineno: int) -> bool:
    """A ``# lazy:`` comment on the import's line, or above it and the imports that follow it."""
    if LAZY_MARK in lines[lineno - 1]:
        return True
    for line in reversed(lines[: lineno - 1]):
        text = line.strip()
        if text.startswith(LAZY_MARK):
            return True
        if not text.startswith(("from ", "import ")):
            return False
    return False


def all_imports() -> list[Import]:
    modules = all_modules()
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def upward_imports(imports: list[Import]) -> list[str]:
    return [
        f"{i.source}:{i.line} imports {i.target} ({LAYERS[layer_of(i.target)][0]}), above its layer {LAYERS[layer_of(i.source)][0]}"
        for i in imports if layer_of(i.target) < layer_of(i.source)
    ]


def unmarked_function_imports(imports: list[Import]) -> list[str]:
    return [f"{i.source}:{i.line} imports {i.target} inside a function without '{LAZY_MARK} <reason>'"
            for i in imports if i.in_function and not i.marked_lazy]


def cycles(imports: list[Import]) -> list[str]:
    """Every import cycle between modules (module-level, function-level and type-checking imports alike)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.target != i.source:
            graph.setdefault(i.source, set()).add(i.target)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def long_modules() -> list[str]:
    return [f"{module}: {n} lines (at most {MAX_MODULE_LINES})" for module, path in all_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]


def long_functions() -> list[str]:
    found = []
    for module, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in LONG_FUNCTIONS_ALLOWED:
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{module}.{node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


def test_every_module_is_in_a_layer() -> None:
    for module in all_modules():
        layer_of(module)


def test_imports_point_down() -> None:
    assert upward_imports(all_imports()) == []


def test_no_import_cycles() -> None:
    assert cycles(all_imports()) == []


def test_function_level_imports_say_why() -> None:
    assert unmarked_function_imports(all_imports()) == []


def test_modules_and_functions_are_small() -> None:
    assert long_modules() == []
    assert long_functions() == []


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    """The checks above catch an upward import, a cycle and an unmarked lazy import."""
    fake = [
        Import("vitrina.data.x", "vitrina.api.y", 1, False, False),
        Import("vitrina.models.a", "vitrina.models.b", 2, False, False),
        Import("vitrina.models.b", "vitrina.models.a", 3, True, True),
        Import("vitrina.inference.c", "vitrina.models.d", 4, True, False),
    ]
    assert len(upward_imports(fake)) == 1
    assert cycles(fake) == ["vitrina.models.a -> vitrina.models.b -> vitrina.models.a"]
    assert unmarked_function_imports(fake) == ["vitrina.inference.c:4 imports vitrina.models.d inside a function without '# lazy: <reason>'"]


if __name__ == "__main__":
    imports = all_imports()
    problems = {
        "upward imports": upward_imports(imports), "cycles": cycles(imports),
        "unmarked function-level imports": unmarked_function_imports(imports),
        "long modules": long_modules(), "long functions": long_functions(),
    }
    inner = sum(1 for i in imports if i.in_function)
    print(f"{len(imports)} internal imports, {inner} inside functions")
    for title, items in problems.items():
        print(f"{title}: {len(items)}")
        for item in items:
            print(f"  {item}")
    sys.exit(1 if any(problems.values()) else 0)
