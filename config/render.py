"""Writing a complete sluis.toml: every setting with its default and a one-line comment."""

from __future__ import annotations

import json
from typing import Any, Mapping

from .settings import SECTIONS, section_fields, toml_key


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_config(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The text of a sluis.toml with every setting; `overrides` replace raw defaults."""
    overrides = overrides or {}
    lines = ["# sluis configuration. Every setting is shown with its default.",
             "# Durations: 90s, 15m, 24h, 30d, 5y. Sizes: 64KiB, 8MiB, 2GiB.", ""]
    for name, section in SECTIONS.items():
        lines.append(f"# {section.__doc__}")
        lines.append(f"[{name}]")
        for spec in section_fields(section):
            raw = overrides.get(name, {}).get(spec.name, spec.metadata["raw"])
            lines.append(f"# {spec.metadata['doc']}")
            lines.append(f"{toml_key(spec)} = {_toml_value(raw)}")
        lines.append("")
    return "\n".join(lines)


def section_summary(section: type) -> str:
    """What a section is for: its docstring after the colon (`[server]: the SSH/SFTP listener.`)."""
    if not section.__doc__ or ": " not in section.__doc__:
        raise ValueError(f"settings section {section.__name__} needs a docstring '[name]: what it is for'")
    return section.__doc__.split(": ", 1)[1]


def render_reference() -> str:
    """The configuration reference in Markdown, as the README carries it (a test keeps them equal)."""
    lines: list[str] = []
    for name, section in SECTIONS.items():
        lines += ["", f"**[{name}]** — {section_summary(section)}", "",
                  "| key | default | meaning |", "|---|---|---|"]
        for spec in section_fields(section):
            raw = _toml_value(spec.metadata["raw"])
            shown = raw if len(raw) <= 40 else raw[:37] + '…"'
            lines.append(f"| `{toml_key(spec)}` | `{shown}` | {spec.metadata['doc']} |")
    return "\n".join(lines).strip()
