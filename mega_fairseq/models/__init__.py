"""fairseq models of the plugin (registered on import)."""
from . import mega, mega_lm  # noqa: F401
