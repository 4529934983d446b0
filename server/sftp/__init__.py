"""sluis."""
