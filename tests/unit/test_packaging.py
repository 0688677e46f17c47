"""The wheel holds every subpackage under `tunewright.` and nothing as a bare top-level package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("api", "trainer", "storage", "inference", "clients", "modeling", "training_files", "graders")
TOP_LEVEL_REFUSED = (*PACKAGE_FOLDERS, "tests", "bench", "infra")


def _copy_sources(destination: Path) -> None:
    """Copy what the build reads, so building leaves no build/ or egg-info in the working tree."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, destination / folder, ignore=ignore)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel once (no isolation: the venv's setuptools) and return its path."""
    work = tmp_path_factory.mktemp("wheel")
    sources = work / "src"
    _copy_sources(sources)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-cache-dir",
        "--quiet",
        "--wheel-dir",
        str(work / "dist"),
        str(sources),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("tunewright-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    """The wheel's member names."""
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _source_packages() -> list[Path]:
    found = []
    for folder in PACKAGE_FOLDERS:
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                found.append(init.parent.relative_to(ROOT))
    return found


def test_every_subpackage_is_in_the_wheel_under_tunewright(wheel_names: set[str]) -> None:
    packages = _source_packages()
    assert Path("api") in packages
    missing = [str(p) for p in packages if f"tunewright/{p.as_posix()}/__init__.py" not in wheel_names]
    assert not missing, f"subpackages missing from the wheel (add them to pyproject): {missing}"


def test_every_module_is_in_the_wheel(wheel_names: set[str]) -> None:
    missing = []
    for package in _source_packages():
        for module in sorted((ROOT / package).glob("*.py")):
            name = f"tunewright/{module.relative_to(ROOT).as_posix()}"
            if name not in wheel_names:
                missing.append(name)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_sql_files_are_in_the_wheel(wheel_names: set[str]) -> None:
    sql_files = sorted((ROOT / "storage" / "sql").rglob("*.sql"))
    assert sql_files
    missing = [
        f"tunewright/{path.relative_to(ROOT).as_posix()}"
        for path in sql_files
        if f"tunewright/{path.relative_to(ROOT).as_posix()}" not in wheel_names
    ]
    assert not missing, f"SQL files missing from the wheel: {missing}"


def test_dashboard_and_api_reference_files_are_in_the_wheel(wheel_names: set[str]) -> None:
    static = ROOT / "api" / "ui" / "static"
    files = sorted(path for path in static.rglob("*") if path.is_file())
    assert any(path.name == "index.html" for path in files)
    assert any(path.name == "swagger-ui-bundle.js" for path in files)
    names = [
        f"tunewright/{path.relative_to(ROOT).as_posix()}" for path in [*files, ROOT / "api" / "ui" / "vendor.toml"]
    ]
    missing = [name for name in names if name not in wheel_names]
    assert not missing, f"dashboard files missing from the wheel (pyproject package-data): {missing}"


def test_the_forgetting_checks_probe_set_is_in_the_wheel(wheel_names: set[str]) -> None:
    assert {"tunewright/trainer/probe/general.jsonl", "tunewright/trainer/probe/README.md"} <= wheel_names


def test_no_bare_top_level_package_in_the_wheel(wheel_names: set[str]) -> None:
    top_levels = {name.split("/", 1)[0] for name in wheel_names}
    assert not top_levels & set(TOP_LEVEL_REFUSED)
    assert {name for name in top_levels if not name.endswith(".dist-info")} == {"tunewright"}


def test_console_script_points_into_the_namespace(wheel: Path, wheel_names: set[str]) -> None:
    name = next(name for name in wheel_names if name.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(name).decode()
    assert "tunewright = tunewright.clients.cli.main:main" in entry_points
    assert "tunewright/clients/cli/main.py" in wheel_names
