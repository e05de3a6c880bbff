"""fairseq models of the plugin (registered on import)."""
from . import mega  # noqa: F401
