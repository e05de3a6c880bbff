"""Replacing a fairseq function once, however often the plugin is imported."""
import inspect


def patch_once(owner, name: str, wrap) -> None:
    """Replace ``owner.name`` (a module's or a class's; a static method stays static; of a property, its
    getter) with ``wrap(owner.name)``, unless ``wrap`` already replaced it: each replacement lists the names
    of the wraps applied in ``mega_patches``, so that importing the plugin again patches nothing twice and
    several wraps of one function stay possible."""
    static = inspect.getattr_static(owner, name)
    original = static.fget if isinstance(static, property) else getattr(owner, name)
    applied = getattr(original, "mega_patches", ())
    if wrap.__name__ in applied:
        return
    patched = wrap(original)
    patched.mega_patches = (*applied, wrap.__name__)
    if isinstance(static, staticmethod):
        patched = staticmethod(patched)
    elif isinstance(static, property):
        patched = static.getter(patched)
    setattr(owner, name, patched)
