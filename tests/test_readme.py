"""The README's two set-up commands exist, and .ci/run runs exactly the README's test command."""

from __future__ import annotations

import re

from tests.helpers.paths import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_readme_has_main_job_and_test_command():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "cdp compare --models chargee3net,equideepdft" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
