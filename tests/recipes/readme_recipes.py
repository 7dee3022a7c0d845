"""The recipe block of docs/reproducing.md: parsing it, and the argv of each command as bash would pass it.

The block lies between ``<!-- recipes:begin -->`` and ``<!-- recipes:end -->``: a bash code block of
groups, each opened by a comment ``# [group-id] title`` and followed by ``python tools/<tool>.py ...``
commands (``\\``-continued lines allowed).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The page that holds the recipe block (README.md links to it).
RECIPES_DOC = Path(__file__).resolve().parents[2] / "docs" / "reproducing.md"

BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"
_GROUP = re.compile(r"^# \[(?P<id>[a-z0-9-]+)\] (?P<title>.+)$")


@dataclass
class RecipeGroup:
    id: str
    title: str
    commands: list[str] = field(default_factory=list)


def parse_recipes(text: str) -> list[RecipeGroup]:
    """The groups of the recipe block in ``text`` (a page's markdown, e.g. RECIPES_DOC's), in order,
    each with its commands as written (one line each)."""
    start, end = text.index(BEGIN), text.index(END)
    block = text[start + len(BEGIN) : end].strip()
    if not (block.startswith("```bash\n") and block.endswith("```")):
        raise ValueError("the recipe block must be one ```bash code block")
    lines = block[len("```bash\n") : -3].replace("\\\n", " ").splitlines()
    groups: list[RecipeGroup] = []
    for line in lines:
        line = " ".join(line.split())
        if not line:
            continue
        match = _GROUP.match(line)
        if match:
            groups.append(RecipeGroup(match["id"], match["title"]))
        elif line.startswith("#"):
            raise ValueError(f"a comment in the recipe block must open a group: {line!r}")
        elif not groups:
            raise ValueError(f"a command before the first group: {line!r}")
        elif not line.startswith("python tools/"):
            raise ValueError(f"recipe commands are `python tools/<tool>.py ...`: {line!r}")
        else:
            groups[-1].commands.append(line)
    return groups


def recipe_groups() -> list[RecipeGroup]:
    """The groups of RECIPES_DOC's recipe block."""
    return parse_recipes(RECIPES_DOC.read_text(encoding="utf-8"))


def bash_argv(command: str, env: dict[str, str], cwd: Path) -> list[str]:
    """The argv ``python`` would receive from bash for ``command`` (quotes and variables as bash
    expands them), without the leading ``python``."""
    printed = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + command.removeprefix("python ")],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
    ).stdout
    return printed.decode().split("\0")[:-1]


def apply_scale(argv: list[str], opts: list[str], flags: dict[str, str]) -> list[str]:
    """``argv`` (``tools/<tool>.py`` first) with the scale knobs: flag values replaced, and the config
    overrides appended to the tools that take them."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in flags:
            out[i + 1] = flags[arg]
    if os.path.basename(out[0]) in ("train_net.py", "generate_pseudo_masks.py"):
        out += opts
    return out


def configs_of_recipes(groups: list[RecipeGroup]) -> set[str]:
    """The ``--config-file`` of every command of ``groups`` (repository-relative paths)."""
    out = set()
    for group in groups:
        for command in group.commands:
            words = command.split()
            if "--config-file" in words:
                out.add(words[words.index("--config-file") + 1])
    return out
