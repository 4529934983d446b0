"""sluis configuration: one typed, frozen settings model read from TOML."""

from .load import ConfigError, default_config_path, load_settings, parse_document
from .render import render_config
from .settings import Settings

__all__ = ["ConfigError", "Settings", "default_config_path", "load_settings", "parse_document",
           "render_config"]
