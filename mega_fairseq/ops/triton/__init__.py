"""Triton kernels of Mega's operations (GPU; on a CPU they run through Triton's interpreter in tests)."""
import os

try:
    import triton  # noqa: F401
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, which runs the kernels on CPU tensors (slowly, for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _patch_interpreter_loop_bounds() -> None:
    """Lets Triton's interpreter take a computed loop bound (``tl.range(0, n)``): it converts the bound
    with ``int()`` of a one-element array, which NumPy 2.4 refuses; converted with ``.item()`` instead."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "mega_fixed", False):  # another Triton, or patched
        return

    def patch_lang_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.mega_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if triton is not None and interpreting():
    _patch_interpreter_loop_bounds()
