"""Print one of the README's set-up commands, so that CI runs exactly what the README says.

The README marks each command with an HTML comment ``<!-- ci: NAME -->``; the command is the first
indented (code) line after it. Usage: ``python .ci/readme_command.py test|main [README.md]``.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!--\s*ci:\s*(\w+)\s*-->\s*$")


def readme_commands(text: str) -> dict[str, str]:
    """Map each marker name to the first indented line that follows it (stripped)."""
    commands: dict[str, str] = {}
    pending: str | None = None
    for line in text.splitlines():
        found = MARKER.match(line)
        if found:
            if found.group(1) in commands or pending is not None:
                raise ValueError(f"README: marker 'ci: {found.group(1)}' appears twice or has no command after it")
            pending = found.group(1)
        elif pending is not None and line.startswith("    ") and line.strip():
            commands[pending] = line.strip()
            pending = None
    if pending is not None:
        raise ValueError(f"README: marker 'ci: {pending}' has no indented command after it")
    return commands


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: readme_command.py NAME [README.md]", file=sys.stderr)
        return 2
    readme = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parents[1] / "README.md"
    try:
        commands = readme_commands(readme.read_text())
    except (OSError, ValueError) as exc:
        print(f"{readme}: {exc}", file=sys.stderr)
        return 2
    if argv[0] not in commands:
        print(f"{readme}: no '<!-- ci: {argv[0]} -->' marker before an indented command", file=sys.stderr)
        return 2
    print(commands[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
