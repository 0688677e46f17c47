"""The vendored dashboard and API-reference files are exactly those api/ui/vendor.toml lists, with their licences."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "api" / "ui"
STATIC = UI / "static"
MANIFEST = tomllib.loads((UI / "vendor.toml").read_text())
OWN_TEXT = (".html", ".js", ".css", ".svg")


def test_every_vendored_file_is_listed_with_its_digest() -> None:
    listed = {name: digest for package in MANIFEST.values() for name, digest in package["files"].items()}
    on_disk = {path.relative_to(STATIC).as_posix() for path in STATIC.rglob("*") if "vendor" in path.parts}
    on_disk = {name for name in on_disk if (STATIC / name).is_file()}
    assert on_disk == set(listed)
    changed = [
        name for name, digest in listed.items() if hashlib.sha256((STATIC / name).read_bytes()).hexdigest() != digest
    ]
    assert not changed, f"vendored files differ from their npm package: {changed}"


def test_every_vendored_package_ships_its_licence() -> None:
    for name, package in MANIFEST.items():
        assert package["license"] in {"MIT", "Apache-2.0"}, name
        assert package["license_files"], name
        for licence in package["license_files"]:
            assert licence in package["files"], (name, licence)
        folder = {Path(file).parent for file in package["files"]}
        assert len(folder) == 1 and folder.pop().name == f"{name.removesuffix('-dist')}-{package['version']}", name


def test_our_own_pages_and_scripts_name_no_other_host() -> None:
    """Only the vendored files (which mention URLs in comments and strings) may hold absolute URLs."""
    own = [p for p in STATIC.rglob("*") if p.suffix in OWN_TEXT and "vendor" not in p.parts]
    assert own
    for path in own:
        text = path.read_text()
        hosts = [url for url in re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text) if "w3.org" not in url]
        assert not hosts, (path, hosts)
