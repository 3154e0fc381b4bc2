"""bench/RESULTS.md holds one "## " section per benchmark; each run replaces only its own."""

from pathlib import Path

TITLE = "# Benchmark results"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with ``heading`` (a "## " line), or append it.

    A section runs until the next "## " or "# " line, so "### " subsections stay inside it.
    """
    lines = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        before, after = "\n".join(lines).rstrip() or TITLE, ""
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "# "))),
            len(lines),
        )
        before, after = "\n".join(lines[:start]).rstrip(), "\n".join(lines[end:]).strip()
    parts = [part for part in (before, section.strip(), after) if part]
    path.write_text("\n\n".join(parts) + "\n")
