"""The rooms of the code and who may import whom (the design guide's "Places"), read from the source.

Every import counts, a lazy one inside a function too: what runs is what matters.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("events", "shared", "functions", "infra")
# Rooms that are packages; any other module is a room of its own (shared.config, functions.worker,
# infra.kafka ...).
PACKAGE_ROOMS = ("shared.domain", "shared.runtime", "shared.adapters", "shared.media",
                 "functions.handlers", "functions.cli", "functions.http")
# The rules need no Kafka, AWS SDK, torch, diffusers or web framework.
NOT_IN_DOMAIN = ("kafka", "boto3", "botocore", "torch", "diffusers", "transformers", "fastapi", "starlette",
                 "uvicorn")
# Of our own code, the rules use only the events, each other and the error family.
DOMAIN_MAY_USE = ("events", "shared.domain", "shared.errors")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            # `from shared.domain import scenes` imports the module shared.domain.scenes
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Our modules and the modules (ours or not) each imports."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(path, root)
            graph[module] = _imports(path, module)
    return graph


def room(module: str) -> str:
    if module == "events" or module.startswith("events."):
        return "events"
    return next((r for r in PACKAGE_ROOMS if module == r or module.startswith(r + ".")), module)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one room (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def violations(root: Path) -> list[str]:
    """Every broken boundary of the tree at `root`, as sentences."""
    graph = import_graph(root)
    ours = set(graph)
    problems = []
    rooms: dict[str, set[str]] = {}
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            top = target.split(".")[0]
            if module.startswith("shared") and top == "functions":
                problems.append(f"{module} imports {target}: nothing under shared/ may import functions")
            elif module.startswith("events") and top in PACKAGES and top != "events":
                problems.append(f"{module} imports {target}: the event contracts import nothing of ours")
            elif _within(module, ("shared.domain",)) and top in NOT_IN_DOMAIN:
                problems.append(f"{module} imports {target}: shared/domain uses no {top}")
            elif _within(module, ("shared.domain",)) and top in PACKAGES and not _within(target, DOMAIN_MAY_USE):
                problems.append(f"{module} imports {target}: shared/domain uses only {', '.join(DOMAIN_MAY_USE)}")
            if target in ours and room(target) != room(module):
                rooms.setdefault(room(module), set()).add(room(target))
    problems += [f"import cycle between {' ⇄ '.join(cycle)}" for cycle in _cycles(rooms)]
    return problems


def test_the_tree_keeps_its_boundaries():
    assert violations(ROOT) == []


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_planted_back_import_a_heavy_import_in_the_rules_and_a_cycle_are_each_found(tmp_path):
    _plant(tmp_path, {
        "events/__init__.py": "",
        "functions/__init__.py": "",
        "functions/handlers/__init__.py": "",
        "functions/handlers/registry.py": "from shared.domain import tiers\n",
        "infra/__init__.py": "",
        "shared/__init__.py": "",
        "shared/errors.py": "",
        "shared/domain/__init__.py": "",
        "shared/domain/tiers.py": "def later():\n    from functions.handlers import registry\n    import torch\n",
        "shared/domain/scenes.py": "from shared.runtime import bus\n",
        "shared/runtime/__init__.py": "",
        "shared/runtime/bus.py": "from shared.domain.scenes import x\n",
    })
    assert violations(tmp_path) == [
        "shared.domain.scenes imports shared.runtime: shared/domain uses only events, shared.domain, shared.errors",
        "shared.domain.scenes imports shared.runtime.bus: shared/domain uses only events, shared.domain, shared.errors",
        "shared.domain.tiers imports functions.handlers: nothing under shared/ may import functions",
        "shared.domain.tiers imports functions.handlers.registry: nothing under shared/ may import functions",
        "shared.domain.tiers imports torch: shared/domain uses no torch",
        "import cycle between functions.handlers ⇄ shared.domain ⇄ shared.runtime",
    ]
