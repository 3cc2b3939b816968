"""What a test reads in an output to see which weights made it (innout.provenance)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Keys whose text may say "random" in an output made with trained weights: the LPIPS and
# FID networks run on random backbones offline and must say so, by name.
METRIC_KEY = re.compile(r"^(lpips|fid)(_|$)|^metrics_note$")


def random_mentions(data: Any, where: str = "") -> list[str]:
    """Where ``data`` (a summary's JSON) says "random" (any case) outside the LPIPS/FID
    keys: ``"path.to.key: text"`` entries, empty when it never does."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            if METRIC_KEY.match(str(key)):
                continue
            path = f"{where}.{key}" if where else str(key)
            if "random" in str(key).lower():
                found.append(f"{path}: (key)")
            found += random_mentions(value, path)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += random_mentions(value, f"{where}[{i}]")
    elif isinstance(data, str) and "random" in data.lower():
        found.append(f"{where}: {data}")
    return found


def random_mentions_in(path: Path) -> list[str]:
    return random_mentions(json.loads(Path(path).read_text()))


def text_mentions_random(text: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether ``text`` (a caption, a page) says "random" once the ``allowed`` phrases
    (the LPIPS/FID notes) are taken out. Runs of whitespace count as one space, as a
    browser shows them (a caption template may wrap a phrase across lines)."""
    text = " ".join(text.split())
    for phrase in allowed:
        text = text.replace(" ".join(phrase.split()), "")
    return "random" in text.lower()
