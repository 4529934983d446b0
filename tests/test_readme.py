"""The README's promises that code can check: quickstart commands and the configuration reference."""

from __future__ import annotations

from pathlib import Path

from sluis.config.render import render_reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_the_two_commands():
    head = README.read_text()[:1500]
    assert "make demo" in head and "make test" in head


def test_configuration_reference_matches_the_settings_model():
    text = README.read_text()
    start = text.index("<!-- config-reference")
    block = text[text.index("-->", start) + 3:text.index("<!-- /config-reference -->")].strip()
    assert block == render_reference(), "regenerate with sluis.config.render.render_reference()"
