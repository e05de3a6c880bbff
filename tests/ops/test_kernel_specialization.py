"""Triton compiles a kernel again for each pattern of its integer arguments (a value equal to 1 or divisible
by 16 is specialized). A size that changes with the batch (rows, batch size, lengths, chunk counts, strides
along the length) must be left unspecialized, or a training run compiles each kernel up to 2^k times over
its first batches. Every kernel of the package lists those of its arguments in ``do_not_specialize``."""
import importlib
import pkgutil

import pytest

from mega_fairseq.ops import triton as triton_ops

BATCH_DEPENDENT = {
    "rows", "rows_total", "row_programs", "programs", "batch", "length", "L", "B", "TC", "cut", "num_chunks",
    "Cq", "Ck", "chunks", "chunk_stride", "key_length", "query_offset", "bias_center", "bias_stride", "bias_numel",
    "mask_stride_b",
}

pytestmark = pytest.mark.skipif(not triton_ops.triton_available(), reason="triton is not installed")


def kernels():
    """(module name, kernel name, kernel) of every Triton kernel (a launched function named *_kernel)."""
    found = []
    for info in pkgutil.iter_modules(triton_ops.__path__):
        module = importlib.import_module(f"{triton_ops.__name__}.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and hasattr(value, "arg_names"):
                found.append((info.name, name, value))
    return found


def unspecialized(kernel) -> set:
    """Names in the kernel's do_not_specialize (a JITFunction keeps indices; the interpreter, its arguments)."""
    if hasattr(kernel, "do_not_specialize"):
        listed = kernel.do_not_specialize
    else:
        listed = kernel.kwargs.get("do_not_specialize", [])
    return {kernel.arg_names[item] if isinstance(item, int) else item for item in listed}


def test_every_kernel_is_found():
    assert {module for module, _, _ in kernels()} == {
        "bias_activation", "block_common", "chunk_softmax", "ema_kernels", "gated_update", "gates", "reset_product"}


@pytest.mark.parametrize("module, name, kernel", kernels(), ids=lambda value: value if isinstance(value, str) else "")
def test_batch_dependent_sizes_are_not_specialized(module, name, kernel):
    specialized = (set(kernel.arg_names) & BATCH_DEPENDENT) - unspecialized(kernel)
    assert not specialized, f"{module}.{name} specializes on {sorted(specialized)}: add them to do_not_specialize"
