"""One colour per model on every chart of the console, whichever page or range draws it."""

import zlib

# Colours that stay apart on a white background and from one another (Tableau 10, then two more).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
    "#1f3a93",
    "#8cd17d",
)


def model_color(model: str) -> str:
    """Return the model's colour, chosen by a hash of its name: stable across pages, processes and
    releases (``hash()`` is salted per process, CRC-32 is not)."""
    return PALETTE[zlib.crc32(model.encode()) % len(PALETTE)]


# The errors chart's two series, apart from every colour of the palette so that neither reads as a model.
REFUSALS_COLOR = "#7c3aed"
OTHER_ERRORS_COLOR = "#991b1b"
