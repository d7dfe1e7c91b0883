"""The package's own structure: no two modules import each other, directly or in a loop."""

from __future__ import annotations

import re

from helpers import ROOT


def _imports() -> dict[str, set[str]]:
    package = ROOT / "vitrecipes"
    found = {}
    for module in package.glob("*.py"):
        text = module.read_text(encoding="utf-8")  # function-level imports count too: they are arrows all the same
        found[module.stem] = set(re.findall(r"^\s*from \.(\w+) import", text, flags=re.M)) - {module.stem}
    return found


def test_no_import_loops_between_the_modules():
    imports = _imports()
    assert "hub" in imports["card"]  # the scan sees the package's arrows

    def loop_from(start, node, path):
        for target in imports.get(node, ()):
            if target == start:
                return [*path, target]
            if target not in path:
                found = loop_from(start, target, [*path, target])
                if found:
                    return found
        return None

    loops = [loop for name in imports if (loop := loop_from(name, name, [name]))]
    assert loops == [], f"import loops: {loops}"
