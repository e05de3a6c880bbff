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
