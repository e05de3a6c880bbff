"""fairseq tasks of the plugin (registered on import)."""
from . import lra, mega_language_modeling, speech_commands  # noqa: F401
