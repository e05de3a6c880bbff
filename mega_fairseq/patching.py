"""Replacing a fairseq function once, however often the plugin is imported."""


def patch_once(owner, name: str, wrap) -> None:
    """Replace ``owner.name`` with ``wrap(owner.name)``, marked ``patched_by_mega``, unless it already is."""
    original = getattr(owner, name)
    if not getattr(original, "patched_by_mega", False):
        patched = wrap(original)
        patched.patched_by_mega = True
        setattr(owner, name, patched)
