"""fairseq tasks of the plugin (registered on import)."""
from . import mega_language_modeling  # noqa: F401
