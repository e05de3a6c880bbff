"""Replacing a fairseq function once, however often the plugin is imported."""
import inspect


def patch_once(owner, name: str, wrap) -> None:
    """Replace ``owner.name`` (a module's or a class's; a static method stays static) with
    ``wrap(owner.name)``, unless ``wrap`` already replaced it: each replacement lists the names of the
    wraps applied in ``mega_patches``, so that importing the plugin again patches nothing twice and
    several wraps of one function stay possible."""
    original = getattr(owner, name)
    applied = getattr(original, "mega_patches", ())
    if wrap.__name__ in applied:
        return
    patched = wrap(original)
    patched.mega_patches = (*applied, wrap.__name__)
    if isinstance(inspect.getattr_static(owner, name), staticmethod):
        patched = staticmethod(patched)
    setattr(owner, name, patched)
