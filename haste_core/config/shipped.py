"""The recipes shipped with haste: the repository's ``recipes/``, installed as the data package ``haste_recipes``.

``haste recipes`` lists them, ``haste recipes cp NAME [DEST]`` copies one, and ``haste run NAME`` (or any
recipe path that does not exist but is a shipped recipe's name) runs one, so a wheel install needs no checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "haste_recipes"
SUFFIX = ".yaml"


def shipped() -> dict[str, Path]:
    """Shipped recipe name (file stem) -> its file, sorted by name; empty when the package is not installed."""
    try:
        folder = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return {}
    files = sorted(Path(str(item)) for item in folder.iterdir() if item.name.endswith(SUFFIX))
    return {path.stem: path for path in files}


def find(name: str) -> Path | None:
    """The shipped recipe called ``name`` (with or without ``.yaml``, or ``recipes/NAME.yaml``), or None."""
    stem = Path(name).stem if Path(name).suffix == SUFFIX else Path(name).name
    if Path(name).parent not in (Path("."), Path("recipes")):
        return None
    return shipped().get(stem)


def summary(path: Path, width: int = 90) -> str:
    """The first sentence of a recipe's header comment, cut to ``width`` characters (its one-line description)."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or (words and not line.lstrip("#").strip()):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    for end in (". ", ": ", "; "):
        text = text.split(end)[0]
    text = text.rstrip(":.")
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."
