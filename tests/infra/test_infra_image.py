"""infra/docker: the Dockerfile passes hadolint, copies every package, and runs `tunewright` as a non-root user.

Images cannot be built here (no base image can be pulled), so these tests check the Dockerfile itself.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

from fixtures.infra import DOCKERFILE, ROOT, find_tool, run_tool


def final_stage() -> str:
    return DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]


def test_hadolint_finds_nothing() -> None:
    result = run_tool([find_tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_folder_is_copied_and_not_ignored() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE.read_text(), flags=re.MULTILINE))
    assert folders <= copied, f"the Dockerfile does not copy {sorted(folders - copied)}"
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for name in [*folders, "pyproject.toml", "README.md"]:
        # The last pattern that matches decides (Docker's rule); `!x/` lets the folder x in.
        excluded = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(name, pattern.lstrip("!").rstrip("/")):
                excluded = not negated
        assert not excluded, f"{name} is left out of the build context by .dockerignore"


def test_the_image_runs_the_tunewright_script_as_a_non_root_user() -> None:
    stage = final_stage()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", stage, flags=re.MULTILINE).group(1))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] == "tini" and entrypoint[-1] in scripts
    user = re.search(r"^USER (\S+)$", stage, flags=re.MULTILINE).group(1)
    assert user.split(":")[0] not in {"0", "root"}
    assert re.search(r"^EXPOSE 8000$", stage, flags=re.MULTILINE)
