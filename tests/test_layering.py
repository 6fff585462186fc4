"""The package layering, read from every module's imports (function-local ones included, via ast):
no import cycle between packages and no import against the layering

    core -> models, data -> train, measure -> families (prune, distill, quantize, design, dynamic)
         -> archive, export -> recipe, report -> cli
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "netcompress"
LAYER = {"core": 0, "models": 1, "data": 1, "train": 2, "measure": 2, "prune": 3, "distill": 3, "quantize": 3,
         "design": 3, "dynamic": 3, "archive": 4, "export": 4, "plugins": 5, "recipe": 5, "report": 5,
         "commands": 6, "cli": 6, "__main__": 6, "__init__": 7}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, str, int, str]]:
    """(importing package, imported package, line, file) for every netcompress import."""
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        mod = ".".join(rel.parts)
        src = package_of(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "netcompress" else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("netcompress.") or (name == "netcompress" and src != "__init__"):
                    dst = package_of(name)
                    if dst != src and name != "netcompress":
                        out.append((src, dst, node.lineno, str(path.relative_to(ROOT.parent))))
    return out


def test_every_package_has_a_layer():
    pkgs = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    mods = {p.stem for p in ROOT.glob("*.py")}
    assert pkgs | mods <= set(LAYER), f"add to LAYER: {sorted((pkgs | mods) - set(LAYER))}"


def test_no_upward_import():
    bad = [f"{f}:{line}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
           for src, dst, line, f in imports() if LAYER[dst] > LAYER[src]]
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for src, dst, _, _ in imports():
        edges.setdefault(src, set()).add(dst)

    def reach(a: str, seen: set[str]) -> set[str]:
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a in reach(b, set()))
    assert not cycles, cycles
