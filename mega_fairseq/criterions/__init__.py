"""fairseq criteria of the plugin (registered on import): lra_cross_entropy."""
from . import lra_cross_entropy  # noqa: F401
