"""The layering rule of DESIGN.md, enforced by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


STANDALONE = ("multimodal.registry", "multimodal.safeio", "multimodal.assets")  # import nothing else of the project


def test_encoders_import_only_third_party_the_registry_safe_io_and_assets():
    standalone = STANDALONE
    for f in files("encoders"):
        bad = {n for n in imports_of(f) if top(n) == "tasks" or (top(n) == "multimodal" and n not in standalone)}
        assert not bad, f"{f} imports {bad}"


def test_multimodal_never_imports_tasks_outside_the_application_layer():
    for f in files("multimodal"):
        rel = f.relative_to(ROOT / "multimodal").as_posix()
        if rel == "cli.py" or rel.startswith("train/"):
            continue
        bad = {n for n in imports_of(f) if top(n) == "tasks"}
        assert not bad, f"{f} imports {bad}"


def test_tasks_import_only_types_collation_sampling_registry_and_encoders():
    allowed = ("multimodal.types", "multimodal.collate", "multimodal.sampling", *STANDALONE)
    for f in files("tasks"):
        for n in imports_of(f):
            if top(n) == "multimodal":
                assert n.startswith(allowed), f"{f} imports {n}"


def test_backbone_imports_neither_diffusion_nor_sampling():
    for f in files("multimodal/backbone"):
        bad = {n for n in imports_of(f) if n.startswith(("multimodal.diffusion", "multimodal.sampling"))}
        assert not bad, f"{f} imports {bad}"


def test_core_numerics_never_import_the_application_layer():
    for package in ("multimodal/sampling", "multimodal/diffusion", "multimodal/backbone"):
        for f in files(package):
            bad = {n for n in imports_of(f) if n.startswith(("multimodal.train", "multimodal.serve"))}
            assert not bad, f"{f} imports {bad}"


MAX_LINES = 800  # DESIGN.md: most files stay under 400 lines, none passes 800


def test_no_source_file_passes_the_line_cap():
    long = {}
    for package in ("multimodal", "encoders", "tasks", "tests", "benchmarks"):
        for f in files(package):
            if (n := len(f.read_text().splitlines())) > MAX_LINES:
                long[f.relative_to(ROOT).as_posix()] = n
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_standalone_modules_import_nothing_of_the_project():
    for name in STANDALONE:
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        assert not {
            n for n in imports_of(path) if top(n) in ("multimodal", "tasks", "encoders") and n not in STANDALONE
        }


def test_the_rule_sees_imports():
    # guard against a parser that silently finds nothing
    assert "torch" in imports_of(ROOT / "multimodal" / "backbone" / "layers.py")


def module_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports (at the top or inside functions)."""
    paths = {}
    for package in ("multimodal", "encoders", "tasks"):
        for f in files(package):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            paths[name] = f
    graph = {}
    for name, f in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        # a package's __init__ importing its own submodules is how registries fill, not a cycle
        graph[name] = {d for d in deps & set(paths) if d != name and not d.startswith(name + ".")}
    return graph


def test_project_modules_import_in_one_direction():
    # e.g. training imports evaluation, which imports the run it evaluates, never back (no lazy-import cycles)
    graph, state = module_graph(), {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join(path[path.index(dep) :] + [dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "multimodal.train.evaluate" in graph["multimodal.train.run"]  # the rule sees lazy imports
