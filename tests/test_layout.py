"""The package layout of docs/ARCHITECTURE.md: no import cycle, no module name twice, no private name
imported across modules, dependencies pointing down (kernels <- core <- integration)."""

import importlib.util
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layout", REPO / "tools" / "check_layout.py")
check_layout = importlib.util.module_from_spec(spec)
sys.modules["check_layout"] = check_layout
spec.loader.exec_module(check_layout)


def test_package_layout_is_clean(capsys):
    code = check_layout.main([str(REPO / "src" / "timeripple")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith("0 problems")


def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_checker_finds_each_kind_of_problem(tmp_path, capsys):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import x\n",
        "b.py": "def f():\n    from .a import y\n",                    # a <-> b, through a local import
        "c.py": "from .a import _private\n",
        "kernels/__init__.py": "",
        "kernels/k.py": "from ..c import z\n",                           # kernels importing the core
        "kernels/b.py": "",                                              # a second module named b
        "diffusers/__init__.py": "",
        "diffusers/d.py": "from ..a import x\n",
        "t.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .diffusers import d\n",
    })
    assert check_layout.main([str(pkg)]) == 1
    out = capsys.readouterr().out
    assert "import cycle: pkg.a <-> pkg.b" in out
    assert "module name 'b' used 2 times" in out
    assert "pkg.c imports private _private from pkg.a" in out
    assert "pkg.kernels.k (layer kernels) imports pkg.c (layer core)" in out
    assert "pkg.t" not in out  # imports under TYPE_CHECKING do not count
    assert "pkg.diffusers.d" not in out  # integration may import the core


def test_architecture_map_names_every_module():
    """docs/ARCHITECTURE.md's map names every module of the package (by path, or by file name in its row)."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    package = REPO / "src" / "timeripple"
    missing = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name != "__init__.py" and str(p.relative_to(package)) not in doc and f"`{p.name}`" not in doc]
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"
