"""bf16 mixed precision for fairseq-train on GPUs (``--bf16-autocast``).

fairseq's own ``--bf16`` switches to TPU training and fails on GPUs. With ``--bf16-autocast``
the model keeps float32 weights and optimizer state (fairseq sees an ordinary float32 model)
and runs its forward pass under ``torch.autocast(dtype=torch.bfloat16)``: matrix products in
bf16, while the EMA's FFT convolution and the attention softmax stay in float32 (the modules
cast for them). The model's outputs are returned in float32 for the criterion. No loss scaling
is needed with bf16.
"""
import torch
from torch import nn

BF16_AUTOCAST_HELP = ("run the forward pass under torch.autocast(bfloat16) with float32 weights "
                      "(bf16 mixed precision on GPUs; fairseq's --bf16 means TPU training)")


def autocast_forward(module: nn.Module, enabled: bool, forward, *args, **kwargs):
    """``forward(*args, **kwargs)``; when enabled, under bf16 autocast on the module's device
    with the output (a tensor, or a tuple whose first item is one) returned in float32."""
    if not enabled:
        return forward(*args, **kwargs)
    with torch.autocast(device_type=next(module.parameters()).device.type, dtype=torch.bfloat16):
        output = forward(*args, **kwargs)
    if isinstance(output, tuple):
        return (output[0].float(), *output[1:])
    return output.float()
