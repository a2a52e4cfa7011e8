"""The bottom layer: contracts every plugin speaks and the small infrastructure they share.

Backbone adapters (`model_flavors/`), benchmarks (`tasks/`) and training methods (`training/`)
import from `umm_harness` only this package; this package imports nothing else of the project.
Orchestration (`umm_harness/*.py`: cli, evaluate, runner, compare, promote, servers) sits on top.
"""

__version__ = "0.1.0"
