"""The fused elementwise work of the Mega block, the cross-attention and the feed-forward network,
as differentiable functions on tensors (Triton kernels of ``ops/triton``; references in
``ops/mega_block_ref.py``).

| function | kernels (forward + backward) | replaces |
|---|---|---|
| ``mega_gates`` | ``triton.gates`` | bias of mx_proj and v_proj, split, sigmoid, silu, q/k affine, act(v), dropout(v) |
| ``cross_gates`` | ``triton.gates`` | bias of q_proj, split, sigmoid, silu |
| ``reset_product`` | ``triton.reset_product`` | (A @ V)^T * r and the copy h_proj needs |
| ``gated_update`` | ``triton.gated_update`` | bias of h_proj/fc2, act, dropout, gated update / residual, post-norm |
| ``gated_update_and_copy`` | ``triton.gated_update`` | the same, and the cast of its output for the next projection |
| ``bias_activation`` | ``triton.bias_activation`` | bias of fc1 / cross v_proj, act, dropout |

Each backward is one kernel (plus one column-sum launch for the parameter gradients), and the
projections' biases are added inside the kernels, so their gradients come from the same partial sums.

Eager calls go through ``torch.autograd.Function`` (the least host time per call); under
``torch.compile`` the same launchers run as custom operators (``torch.ops.mega_fairseq.*``, with
fake implementations and registered backward operators), which trace without graph breaks and
with dynamic shapes. Dropout draws one seed per call (``draw_seed``: an int64 tensor on the input's
device from torch's generator for it), which the kernels read: no host synchronisation, and a CUDA
graph that replays the block draws a new seed each replay. The kernels regenerate the mask in the
backward.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .triton import block_common, interpreting, triton_available
from .triton.block_common import activation_code, draw_seed  # noqa: F401  (the modules draw their seeds here)
from .triton.gated_update import NORM_CODES, output_dtype

if triton_available():
    from .triton import bias_activation as _bias_activation
    from .triton import gated_update as _gated_update
    from .triton import gates as _gates
    from .triton import reset_product as _reset_product


def fused_block_unavailable(x: Tensor) -> Optional[str]:
    """Why the fused kernels cannot run on x (None when they can)."""
    if not triton_available():
        return "triton is not installed"
    if not (x.is_cuda or interpreting()):
        return "the input is not on a CUDA device"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the input dtype {x.dtype} is not float32, float16 or bfloat16"
    return None


def _seed(seed: Optional[Tensor], p: float, like: Tensor) -> Tensor:
    """The seed tensor the kernels read; without dropout any tensor on the device (never read)."""
    if p <= 0.0:
        return like
    if seed is None:
        raise ValueError("dropout inside a fused kernel needs a seed (ops.mega_block.draw_seed(device))")
    if seed.device != like.device or seed.dtype != torch.int64 or seed.numel() != 1:
        raise ValueError(f"a dropout seed is one int64 value on the input's device ({like.device}); got "
                         f"{tuple(seed.shape)} {seed.dtype} on {seed.device}")
    return seed


def _split(packed: Tensor, like: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Consecutive pieces of a packed gradient shaped and typed as the tensors of ``like``."""
    pieces, start = [], 0
    for tensor in like:
        if tensor is None:
            pieces.append(None)
            continue
        piece = packed[start: start + tensor.numel()].view(tensor.shape)
        pieces.append(piece if piece.dtype == tensor.dtype else piece.to(tensor.dtype))
        start += tensor.numel()
    return pieces


def _grad(grad: Optional[Tensor], shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A contiguous gradient, zeros for an output that got none."""
    return torch.zeros(shape, dtype=dtype, device=device) if grad is None else grad.contiguous()


def _unit_stride(t: Tensor) -> Tensor:
    """t itself when its last axis is contiguous (the kernels take the other strides), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _output_meta(outputs: Sequence[Tensor]):
    return [(o.shape, o.dtype, o.device) for o in outputs]


# ------------------------------------------------------------------ launch wrappers (shared by both paths)


def _mega_gates_fwd(base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed):
    return _gates.mega_gates_forward(base.contiguous(), base_bias, values.contiguous(), value_bias, gamma.contiguous(),
                                     beta.contiguous(), activation, p, feature, _seed(seed, p, base))


def _mega_gates_bwd(base, base_bias, values, value_bias, gamma, grads, activation, p, feature, seed):
    grad_u, grad_r, grad_hx, grad_q, grad_k, grad_v = grads
    return _gates.mega_gates_backward(base, base_bias, values, value_bias, gamma, grad_u, grad_r, grad_hx, grad_q,
                                      grad_k, grad_v, activation, p, feature, _seed(seed, p, base), base_bias.dtype)


def _update_fwd(h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature, seed, copy_dtype):
    return _gated_update.gated_update_forward(
        h.contiguous(), bias, None if hx is None else hx.contiguous(), None if u is None else u.contiguous(),
        residual.contiguous(), weight, norm_bias, norm, eps, activation, p, feature, _seed(seed, p, h), copy_dtype)


def _update_bwd(grad_out, grad_copy, h, bias, hx, u, residual, weight, has_norm_bias, stats, norm, activation, p,
                feature, seed):
    return _gated_update.gated_update_backward(
        None if grad_out is None else grad_out.contiguous(), h, bias, hx, u, residual, weight, has_norm_bias, stats,
        norm, activation, p, feature, _seed(seed, p, h), bias.dtype,
        None if grad_copy is None else grad_copy.contiguous())


def _update_grads(grad_h, grad_u, grad_res, packed, bias, hx, u, weight, norm_bias):
    grad_bias, grad_weight, grad_norm_bias = _split(packed, [bias, weight, norm_bias])
    grad_hx = None if hx is None else grad_h.to(hx.dtype)
    return grad_h, grad_bias, grad_hx, grad_u, grad_res, grad_weight, grad_norm_bias


# ------------------------------------------------------------------ eager path: autograd Functions


class _MegaGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed):
        outputs = _mega_gates_fwd(base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed)
        ctx.save_for_backward(base, base_bias, values, value_bias, gamma, beta)
        ctx.options = (activation, p, feature, seed)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        base, base_bias, values, value_bias, gamma, beta = ctx.saved_tensors
        grads = [g.contiguous() for g in grads]
        grad_base, grad_values, packed = _mega_gates_bwd(base.contiguous(), base_bias, values.contiguous(),
                                                         value_bias, gamma.contiguous(), grads, *ctx.options)
        grad_base_bias, grad_value_bias, grad_gamma, grad_beta = _split(packed, [base_bias, value_bias, gamma, beta])
        return grad_base, grad_base_bias, grad_values, grad_value_bias, grad_gamma, grad_beta, None, None, None, None


class _CrossGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base, bias, z_dim):
        ctx.save_for_backward(base, bias)
        return _gates.cross_gates_forward(base.contiguous(), bias, z_dim)

    @staticmethod
    def backward(ctx, grad_u, grad_r, grad_q):
        base, bias = ctx.saved_tensors
        grad_base, grad_bias = _gates.cross_gates_backward(base.contiguous(), bias, grad_u.contiguous(),
                                                           grad_r.contiguous(), grad_q.contiguous(), bias.dtype)
        return grad_base, grad_bias, None


class _ResetProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, r):
        out = _unit_stride(out)
        ctx.save_for_backward(out, r)
        return _reset_product.reset_product_forward(out, r.contiguous())

    @staticmethod
    def backward(ctx, grad_y):
        out, r = ctx.saved_tensors
        return _reset_product.reset_product_backward(grad_y.contiguous(), out, r.contiguous())


class _BiasActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, activation, p, feature, seed, batch_first):
        ctx.save_for_backward(x, bias)
        ctx.options = (activation, p, feature, seed, batch_first)
        return _bias_activation.bias_activation_forward(x.contiguous(), bias, activation, p, feature,
                                                        _seed(seed, p, x), batch_first)

    @staticmethod
    def backward(ctx, grad_y):
        x, bias = ctx.saved_tensors
        activation, p, feature, seed, batch_first = ctx.options
        grad_x, grad_bias = _bias_activation.bias_activation_backward(
            grad_y.contiguous(), x.contiguous(), bias, activation, p, feature, _seed(seed, p, x), batch_first,
            bias.dtype)
        return grad_x, grad_bias, None, None, None, None, None


class _GatedUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature, seed, copy_dtype):
        out, stats, copy = _update_fwd(h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature,
                                       seed, copy_dtype)
        ctx.save_for_backward(h, bias, hx, u, residual, weight, norm_bias, stats)
        ctx.options = (norm, activation, p, feature, seed)
        ctx.set_materialize_grads(False)
        return out, copy

    @staticmethod
    def backward(ctx, grad_out, grad_copy):
        h, bias, hx, u, residual, weight, norm_bias, stats = ctx.saved_tensors
        norm, activation, p, feature, seed = ctx.options
        contiguous = [None if t is None else t.contiguous() for t in (h, hx, u, residual)]
        grad_h, grad_u, grad_res, packed = _update_bwd(grad_out, grad_copy, contiguous[0], bias, contiguous[1],
                                                       contiguous[2], contiguous[3], weight, norm_bias is not None,
                                                       stats, norm, activation, p, feature, seed)
        grads = _update_grads(grad_h, grad_u, grad_res, packed, bias, hx, u, weight, norm_bias)
        return (*grads, None, None, None, None, None, None, None)


# ------------------------------------------------------------------ torch.compile path: custom operators

if triton_available():

    @torch.library.custom_op("mega_fairseq::mega_gates", mutates_args=())
    def _mega_gates_op(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor,
                       beta: Tensor, activation: int, p: float, feature: bool, seed: Optional[Tensor]
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _mega_gates_fwd(base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed)

    @_mega_gates_op.register_fake
    def _(base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed):
        length, batch, width = base.shape
        hidden, z_dim = values.shape[-1], gamma.shape[-1]
        dim = (width - z_dim - hidden) // 2
        qk_dtype = torch.promote_types(torch.promote_types(base.dtype, gamma.dtype), beta.dtype)
        q = base.new_empty(batch, length, z_dim, dtype=qk_dtype)
        return (base.new_empty(length, batch, dim), base.new_empty(length, batch, hidden),
                base.new_empty(length, batch, dim), q, torch.empty_like(q), values.new_empty(batch, length, hidden))

    @torch.library.custom_op("mega_fairseq::mega_gates_backward", mutates_args=())
    def _mega_gates_backward_op(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor,
                                grad_u: Tensor, grad_r: Tensor, grad_hx: Tensor, grad_q: Tensor, grad_k: Tensor,
                                grad_v: Tensor, activation: int, p: float, feature: bool, seed: Optional[Tensor]
                                ) -> Tuple[Tensor, Tensor, Tensor]:
        return _mega_gates_bwd(base.contiguous(), base_bias, values.contiguous(), value_bias, gamma.contiguous(),
                               [grad_u, grad_r, grad_hx, grad_q, grad_k, grad_v], activation, p, feature, seed)

    @_mega_gates_backward_op.register_fake
    def _(base, base_bias, values, value_bias, gamma, grad_u, grad_r, grad_hx, grad_q, grad_k, grad_v, activation,
          p, feature, seed):
        width = base.shape[-1] + values.shape[-1] + 4 * gamma.shape[-1]
        return torch.empty_like(base), torch.empty_like(values), base_bias.new_empty(width)

    def _mega_gates_setup(ctx, inputs, output):
        base, base_bias, values, value_bias, gamma, beta, activation, p, feature, seed = inputs
        ctx.save_for_backward(base, base_bias, values, value_bias, gamma, beta)
        ctx.options, ctx.outputs = (activation, p, feature, seed), _output_meta(output)

    def _mega_gates_backward(ctx, *grads):
        base, base_bias, values, value_bias, gamma, beta = ctx.saved_tensors
        grads = [_grad(g, *meta) for g, meta in zip(grads, ctx.outputs)]
        grad_base, grad_values, packed = _mega_gates_backward_op(base, base_bias, values, value_bias, gamma, *grads,
                                                                 *ctx.options)
        grad_base_bias, grad_value_bias, grad_gamma, grad_beta = _split(packed, [base_bias, value_bias, gamma, beta])
        return grad_base, grad_base_bias, grad_values, grad_value_bias, grad_gamma, grad_beta, None, None, None, None

    _mega_gates_op.register_autograd(_mega_gates_backward, setup_context=_mega_gates_setup)

    @torch.library.custom_op("mega_fairseq::cross_gates", mutates_args=())
    def _cross_gates_op(base: Tensor, bias: Tensor, z_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
        return _gates.cross_gates_forward(base.contiguous(), bias, z_dim)

    @_cross_gates_op.register_fake
    def _(base, bias, z_dim):
        length, batch, width = base.shape
        dim = (width - z_dim) // 2
        return (base.new_empty(length, batch, dim), base.new_empty(length, batch, dim),
                base.new_empty(batch, length, z_dim))

    @torch.library.custom_op("mega_fairseq::cross_gates_backward", mutates_args=())
    def _cross_gates_backward_op(base: Tensor, bias: Tensor, grad_u: Tensor, grad_r: Tensor, grad_q: Tensor
                                 ) -> Tuple[Tensor, Tensor]:
        return _gates.cross_gates_backward(base.contiguous(), bias, grad_u.contiguous(), grad_r.contiguous(),
                                           grad_q.contiguous(), bias.dtype)

    @_cross_gates_backward_op.register_fake
    def _(base, bias, grad_u, grad_r, grad_q):
        return torch.empty_like(base), torch.empty_like(bias)

    def _cross_gates_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.outputs = _output_meta(output)

    def _cross_gates_backward(ctx, grad_u, grad_r, grad_q):
        base, bias = ctx.saved_tensors
        grads = [_grad(g, *meta) for g, meta in zip((grad_u, grad_r, grad_q), ctx.outputs)]
        grad_base, grad_bias = _cross_gates_backward_op(base, bias, *grads)
        return grad_base, grad_bias, None

    _cross_gates_op.register_autograd(_cross_gates_backward, setup_context=_cross_gates_setup)

    @torch.library.custom_op("mega_fairseq::reset_product", mutates_args=())
    def _reset_product_op(out: Tensor, r: Tensor) -> Tensor:
        return _reset_product.reset_product_forward(_unit_stride(out), r.contiguous())

    @_reset_product_op.register_fake
    def _(out, r):
        return r.new_empty(r.shape, dtype=torch.promote_types(out.dtype, r.dtype))

    @torch.library.custom_op("mega_fairseq::reset_product_backward", mutates_args=())
    def _reset_product_backward_op(grad_y: Tensor, out: Tensor, r: Tensor) -> Tuple[Tensor, Tensor]:
        return _reset_product.reset_product_backward(grad_y.contiguous(), _unit_stride(out), r.contiguous())

    @_reset_product_backward_op.register_fake
    def _(grad_y, out, r):
        return out.new_empty(out.shape), torch.empty_like(r)

    def _reset_product_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _reset_product_backward(ctx, grad_y):
        out, r = ctx.saved_tensors
        return _reset_product_backward_op(grad_y, out, r)

    _reset_product_op.register_autograd(_reset_product_backward, setup_context=_reset_product_setup)

    @torch.library.custom_op("mega_fairseq::bias_activation", mutates_args=())
    def _bias_activation_op(x: Tensor, bias: Tensor, activation: int, p: float, feature: bool, seed: Optional[Tensor],
                            batch_first: bool) -> Tensor:
        return _bias_activation.bias_activation_forward(x.contiguous(), bias, activation, p, feature, _seed(seed, p, x),
                                                        batch_first)

    @_bias_activation_op.register_fake
    def _(x, bias, activation, p, feature, seed, batch_first):
        length, batch, width = x.shape
        return x.new_empty((batch, length, width) if batch_first else (length, batch, width))

    @torch.library.custom_op("mega_fairseq::bias_activation_backward", mutates_args=())
    def _bias_activation_backward_op(grad_y: Tensor, x: Tensor, bias: Tensor, activation: int, p: float, feature: bool,
                                     seed: Optional[Tensor], batch_first: bool) -> Tuple[Tensor, Tensor]:
        return _bias_activation.bias_activation_backward(grad_y.contiguous(), x.contiguous(), bias, activation, p,
                                                         feature, _seed(seed, p, x), batch_first, bias.dtype)

    @_bias_activation_backward_op.register_fake
    def _(grad_y, x, bias, activation, p, feature, seed, batch_first):
        return torch.empty_like(x), torch.empty_like(bias)

    def _bias_activation_setup(ctx, inputs, output):
        x, bias, *options = inputs
        ctx.save_for_backward(x, bias)
        ctx.options = options

    def _bias_activation_backward(ctx, grad_y):
        x, bias = ctx.saved_tensors
        grad_x, grad_bias = _bias_activation_backward_op(grad_y, x, bias, *ctx.options)
        return grad_x, grad_bias, None, None, None, None, None

    _bias_activation_op.register_autograd(_bias_activation_backward, setup_context=_bias_activation_setup)

    @torch.library.custom_op("mega_fairseq::gated_update", mutates_args=())
    def _gated_update_op(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                         weight: Optional[Tensor], norm_bias: Optional[Tensor], norm: int, eps: float,
                         activation: int, p: float, feature: bool, seed: Optional[Tensor],
                         copy_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Tensor, Tensor]:
        out, stats, copy = _update_fwd(h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature,
                                       seed, copy_dtype)
        return out, stats, out.new_empty(0) if copy is None else copy

    @_gated_update_op.register_fake
    def _(h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature, seed, copy_dtype):
        rows = residual.shape[0] * residual.shape[1] if norm else 0
        out = residual.new_empty(residual.shape, dtype=output_dtype(h, hx, u, residual))
        copy = out.new_empty(0) if copy_dtype is None else out.new_empty(residual.shape, dtype=copy_dtype)
        return out, residual.new_empty(rows, 2, dtype=torch.float32), copy

    @torch.library.custom_op("mega_fairseq::gated_update_backward", mutates_args=())
    def _gated_update_backward_op(grad_out: Optional[Tensor], grad_copy: Optional[Tensor], h: Tensor, bias: Tensor,
                                  hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor, weight: Optional[Tensor],
                                  has_norm_bias: bool, stats: Tensor, norm: int, activation: int, p: float,
                                  feature: bool, seed: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        grad_h, grad_u, grad_res, packed = _update_bwd(
            grad_out, grad_copy, h.contiguous(), bias, None if hx is None else hx.contiguous(),
            None if u is None else u.contiguous(), residual.contiguous(), weight, has_norm_bias, stats, norm,
            activation, p, feature, seed)
        return grad_h, grad_h.new_empty(0) if grad_u is None else grad_u, grad_res, packed

    @_gated_update_backward_op.register_fake
    def _(grad_out, grad_copy, h, bias, hx, u, residual, weight, has_norm_bias, stats, norm, activation, p, feature,
          seed):
        dim = residual.shape[-1]
        width = (dim + _gated_update.norm_weight_width(norm, dim, weight is not None)
                 + (dim if has_norm_bias else 0))
        grad_u = h.new_empty(0) if u is None else torch.empty_like(u)
        return torch.empty_like(h), grad_u, torch.empty_like(residual), bias.new_empty(width)

    def _gated_update_setup(ctx, inputs, output):
        h, bias, hx, u, residual, weight, norm_bias, norm, eps, activation, p, feature, seed, copy_dtype = inputs
        ctx.save_for_backward(h, bias, hx, u, residual, weight, norm_bias, output[1])
        ctx.options, ctx.out_dtype = (norm, activation, p, feature, seed), output[0].dtype
        ctx.has_copy = copy_dtype is not None

    def _gated_update_backward(ctx, grad_out, grad_stats, grad_copy):
        h, bias, hx, u, residual, weight, norm_bias, stats = ctx.saved_tensors
        norm, activation, p, feature, seed = ctx.options
        grad_copy = grad_copy if ctx.has_copy else None
        if grad_copy is None:
            grad_out = _grad(grad_out, residual.shape, ctx.out_dtype, residual.device)
        grad_h, grad_u, grad_res, packed = _gated_update_backward_op(
            grad_out, grad_copy, h, bias, hx, u, residual, weight, norm_bias is not None, stats, norm, activation, p,
            feature, seed)
        grads = _update_grads(grad_h, None if u is None else grad_u, grad_res, packed, bias, hx, u, weight, norm_bias)
        return (*grads, None, None, None, None, None, None, None)

    _gated_update_op.register_autograd(_gated_update_backward, setup_context=_gated_update_setup)


# ------------------------------------------------------------------ public functions


def mega_gates(base: Tensor, base_bias: Tensor, values: Tensor, value_bias: Tensor, gamma: Tensor, beta: Tensor, *,
               activation: str, dropout: float, feature_dropout: bool, seed: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The Mega block's gates from ``base = mx(L, B, D) @ W_mx^T`` (L, B, D + Z + H + D, no bias) and
    ``values = x @ W_v^T`` (L, B, H, no bias). Returns u (L, B, D), r (L, B, H), hx (L, B, D),
    q, k (B, L, Z) and v = dropout(act(values + b_v)) (B, L, H); see ``triton.gates``."""
    args = (base, base_bias, values, value_bias, gamma, beta, activation_code(activation), float(dropout),
            bool(feature_dropout), seed)
    if torch.compiler.is_compiling():
        return _mega_gates_op(*args)
    return _MegaGates.apply(*args)


def cross_gates(base: Tensor, bias: Tensor, z_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The cross-attention's gates from ``base = x @ W_q^T`` (L, B, 2D + Z, no bias): u, r (L, B, D)
    and the queries q (B, L, Z)."""
    if torch.compiler.is_compiling():
        return _cross_gates_op(base, bias, z_dim)
    return _CrossGates.apply(base, bias, z_dim)


def reset_product(out: Tensor, r: Tensor) -> Tensor:
    """Attention output out (B, L, H) times the reset gate r (L, B, H) -> (L, B, H) contiguous."""
    if torch.compiler.is_compiling():
        return _reset_product_op(out, r)
    return _ResetProduct.apply(out, r)


def bias_activation(x: Tensor, bias: Tensor, *, activation: str, dropout: float, feature_dropout: bool,
                    seed: Optional[Tensor], batch_first: bool = False) -> Tensor:
    """dropout(act(x + bias)) for x (L, B, W); (B, L, W) when batch_first."""
    args = (x, bias, activation_code(activation), float(dropout), bool(feature_dropout), seed, bool(batch_first))
    if torch.compiler.is_compiling():
        return _bias_activation_op(*args)
    return _BiasActivation.apply(*args)


def gated_update(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                 norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None, *, norm: str = "none",
                 eps: float = 1e-5, activation: str = "silu", dropout: float = 0.0, feature_dropout: bool = False,
                 seed: Optional[Tensor] = None) -> Tensor:
    """norm(residual + u * (dropout(act(h + bias + hx)) - residual)), or without u
    norm(residual + dropout(act(h + bias))); all (L, B, D), hx and u optional; norm one of
    none | layernorm | rmsnorm | scalenorm with its weight (D,) ((1,) for scalenorm) and bias."""
    return gated_update_and_copy(h, bias, hx, u, residual, norm_weight, norm_bias, norm=norm, eps=eps,
                                 activation=activation, dropout=dropout, feature_dropout=feature_dropout, seed=seed,
                                 copy_dtype=None)[0]


def gated_update_and_copy(h: Tensor, bias: Tensor, hx: Optional[Tensor], u: Optional[Tensor], residual: Tensor,
                          norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None, *,
                          norm: str = "none", eps: float = 1e-5, activation: str = "silu", dropout: float = 0.0,
                          feature_dropout: bool = False, seed: Optional[Tensor] = None,
                          copy_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Tensor]:
    """``gated_update`` and its output in ``copy_dtype`` (L, B, D), stored by the same kernel (the input
    of the next projection under autocast; the backward sums both gradients). Without copy_dtype, or
    when the output already has it, the copy is the output itself."""
    if copy_dtype == output_dtype(h, hx, u, residual):
        copy_dtype = None
    args = (h, bias, hx, u, residual, norm_weight, norm_bias, NORM_CODES[norm], float(eps),
            activation_code(activation), float(dropout), bool(feature_dropout), seed, copy_dtype)
    if torch.compiler.is_compiling():
        out, _, copy = _gated_update_op(*args)
    else:
        out, copy = _GatedUpdate.apply(*args)
    return out, out if copy_dtype is None else copy


def dropout_scales(like: Tensor, seed: Tensor, p: float, site: int, feature: bool = False) -> Tensor:
    """The dropout factors keep / (1 - p) (float32) the kernels apply at ``site`` to a time-major
    tensor shaped as ``like`` (L, B, W), for tests that compare with the references."""
    length, batch, width = like.shape
    return block_common.dropout_scales(length * batch, width, batch, seed, p, site, feature,
                                       like.device).view(like.shape)
