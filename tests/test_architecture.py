"""The layers of docs/architecture.md, checked on the source: who may import whom, and where
torch may be imported. Plus a size report of the largest classes and functions."""

from __future__ import annotations

import ast

from helpers.common import REPO

LEAVES = {"trainer", "trainer.errors", "trainer.states", "trainer.eventkinds", "trainer.exitcodes", "trainer.ids",
          "trainer.timefmt", "trainer.clock", "trainer.config", "trainer.gate"}
# A package may import the leaves, itself and the packages listed here (at module level or inside
# functions alike).
MAY_IMPORT = {
    "trainer.spool": set(),
    "trainer.intake": {"trainer.spool"},
    "trainer.demo": {"trainer.spool"},
    "trainer.report": {"trainer.spool"},
    "trainer.daemon": {"trainer.spool", "trainer.intake", "trainer.train.protocol", "trainer.train.engine",
                       "trainer.train.world", "trainer.train.follower", "trainer.report"},
    "trainer.train": {"trainer.spool", "trainer.intake", "trainer.demo"},
    "ctl": {"trainer.spool", "trainer.intake", "trainer.daemon.units", "trainer.demo", "trainer.report"},
}
HEAVY = ("torch", "transformers", "safetensors", "peft", "numpy")


def _modules():
    for path in sorted([*REPO.glob("trainer/**/*.py"), *REPO.glob("ctl/**/*.py")]):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


KNOWN = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
         for p in [*REPO.glob("trainer/**/*.py"), *REPO.glob("ctl/**/*.py")]}


def _imports(tree) -> list[tuple[str, bool]]:
    """(module, at module level) for every import."""
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in KNOWN]
            found += [(m, id(node) in top) for m in submodules or [node.module]]
    return found


def _package(name: str) -> str:
    return next((p for p in MAY_IMPORT if name == p or name.startswith(p + ".")), name)


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for name, path, tree in _modules():
        package = _package(name)
        if package not in MAY_IMPORT:
            continue  # a leaf: checked below
        allowed = MAY_IMPORT[package] | {package}
        for imported, _ in _imports(tree):
            if not imported.startswith(("trainer.", "ctl.")) or imported in LEAVES:
                continue
            if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                if not any(a.startswith(imported + ".") for a in allowed):  # "from trainer.train import x"
                    wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_leaves_import_only_leaves():
    for name, path, tree in _modules():
        if name in LEAVES:
            bad = [m for m, _ in _imports(tree) if m.startswith("trainer.") and m not in LEAVES]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_torch_is_imported_at_module_level_only_under_train():
    for name, path, tree in _modules():
        heavy = [m for m, top in _imports(tree) if top and m.split(".")[0] in HEAVY]
        if heavy and not name.startswith("trainer.train."):
            raise AssertionError(f"{path.relative_to(REPO)} imports {heavy} at module level")
        if name == "trainer.train.protocol":
            assert not heavy, "the engine protocol is what the torch-free daemon depends on"


def test_no_class_or_function_grows_past_the_size_that_wants_splitting(capsys):
    sizes = []
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                sizes.append((node.end_lineno - node.lineno + 1, kind, f"{path.relative_to(REPO)}:{node.name}"))
    sizes.sort(reverse=True)
    with capsys.disabled():
        print("\nlargest: " + ", ".join(f"{what} {lines}" for lines, _, what in sizes[:6]))
    # A guide rather than a goal (docs/architecture.md: ~250 a class, ~60 a function); these
    # bounds catch a regrowth of the old 515-line daemon class, not a few lines over the guide.
    too_big = [(n, w) for n, kind, w in sizes if n > (400 if kind == "class" else 80)]
    assert not too_big, too_big
