"""Versioned prompt templates. A template is a text file here; its sha256 is stored on
every row made with it, so a changed template never silently mixes with an old one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


class TemplateError(ValueError):
    """A template file is missing or lacks a placeholder it needs."""


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def render(self, **fields: str) -> str:
        try:
            return self.text.format(**fields)
        except KeyError as e:
            raise TemplateError(f"template {self.name!r} needs field {e}") from None


def load_template(name: str) -> Template:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise TemplateError(f"prompt template {name!r} not found in {PROMPTS_DIR} (have {have})")
    return Template(name, path.read_text(encoding="utf-8"))
