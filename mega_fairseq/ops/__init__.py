"""Mega's operations as functions on tensors (torch only), each fast path beside its plain reference.

| operation | fast paths | float64 reference |
|---|---|---|
| multi-dimensional damped EMA | ``ema`` (FFT, carried-state steps), ``triton.ema_scan`` (fused GPU scan) | ``ema_ref`` |
| chunked single-head attention | ``attention`` (matmul, SDPA), ``triton.fused_attention`` (fused GPU kernel) | ``attention_ref`` |
| relative position biases | ``position_bias`` | ``position_bias_ref`` |
| norms | ``modules.norms`` (PyTorch's) | ``norm_ref`` |
| whole sub-layers (block, cross-attention, NFFN, layers) | ``modules`` | ``block_ref`` |
| gates, gated updates, post-norms of the sub-layers | ``mega_block`` (fused Triton kernels) | ``mega_block_ref`` |
"""
