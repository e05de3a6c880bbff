"""fairseq models of the plugin (registered on import)."""
from . import lra, mega, mega_lm  # noqa: F401
