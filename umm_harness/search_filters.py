"""String values inside MLflow search filters (`search_runs`, `search_model_versions`, ...).

MLflow's filter syntax has no escape character: a value is the text between a pair of single
or double quotes, taken as is. A user's name pasted between single quotes breaks the filter
when it holds a quote (and the look-up then silently finds nothing), so every value goes
through `quoted`, which picks the quote character the value does not hold.
"""

from __future__ import annotations

from umm_harness.core.errors import ConfigError


def quoted(value: str) -> str:
    """`value` as a filter string literal; a value holding both quote characters cannot be one."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"'{value}' holds both ' and \": MLflow's search cannot look it up; choose a name without one")
