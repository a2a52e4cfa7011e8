"""Errors the CLI turns into one readable line and exit code 2."""


class ConfigError(ValueError):
    """A recipe, CLI argument or model reference that cannot be used as given."""
