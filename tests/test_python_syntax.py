"""Every Python file in the tree parses as Python 3.10, the oldest version pyproject.toml allows
(the host's newer Python would accept 3.12-only forms such as f-strings reusing their own quotes)."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {"__pycache__", "node_modules", "out"}  # plus hidden folders: caches, the GPU bundle, git


def python_files():
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts[:-1]
        if not any(p.startswith(".") or p in SKIP for p in parts):
            yield path


def oldest_python() -> tuple:
    text = (REPO / "pyproject.toml").read_text()
    major, minor = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', text).groups()
    return int(major), int(minor)


def test_every_file_parses_as_the_oldest_supported_python():
    version = oldest_python()
    assert version == (3, 10), f"pyproject.toml's requires-python changed to {version}: update this test"
    files = list(python_files())
    assert len(files) > 50 and REPO / "bench" / "gpu_smoke.py" in files
    failures = []
    for path in files:
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=version)
        except SyntaxError as exc:
            failures.append(f"{path.relative_to(REPO)}:{exc.lineno}: {exc.msg}")
    assert not failures, "not Python 3.10 syntax:\n" + "\n".join(failures)


def test_the_check_refuses_newer_syntax():
    """The check itself: 3.11's except* is refused under feature_version (3, 10)."""
    code = "try:\n    pass\nexcept* ValueError:\n    pass\n"
    ast.parse(code)
    try:
        ast.parse(code, feature_version=(3, 10))
    except SyntaxError:
        return
    raise AssertionError("ast.parse(feature_version=(3, 10)) accepted except*")
