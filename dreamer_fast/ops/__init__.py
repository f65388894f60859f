"""Fast ops and their pure-PyTorch references (``<op>_ref``, same signature).

| op | equivalent to |
|---|---|
| ``lambda_return(reward, value, pcont, bootstrap, lambda_, axis)`` | DreamerV1/V2 λ-return |
| ``reverse_scan(inputs, decay, init, axis)`` | ``R[t] = inputs[t] + decay[t] * R[t+1]`` |
| ``gru_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)`` | ``torch.nn.GRUCell`` |
| ``ln_gru_cell(input, hx, weight, norm_weight, norm_bias, update_bias, eps)`` | DreamerV2 LayerNorm GRU |
| ``block_gru_cell(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias, blocks, act, eps)`` | DreamerV3 block GRU core |
| ``linear_norm_act(input, weight, bias, norm_weight, norm_bias, norm, act, eps)`` | ``act(norm(x W^T + b))`` |
| ``gaussian_sample(stats, noise, min_std)`` | ``mean + (softplus(raw) + min_std) * noise`` |
| ``categorical_sample(logits, uniform, unimix)`` | straight-through one-hot of ``(1-unimix) softmax + unimix/K`` |
"""

from dreamer_fast.ops.block_gru import block_gru_cell, block_gru_cell_ref
from dreamer_fast.ops.cells import gru_cell, gru_cell_ref, ln_gru_cell, ln_gru_cell_ref
from dreamer_fast.ops.dense import linear_norm_act, linear_norm_act_ref
from dreamer_fast.ops.heads import (categorical_sample, categorical_sample_ref, gaussian_sample,
                                    gaussian_sample_ref)
from dreamer_fast.ops.scan import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

__all__ = [
    "lambda_return", "lambda_return_ref", "reverse_scan", "reverse_scan_ref",
    "gru_cell", "gru_cell_ref", "ln_gru_cell", "ln_gru_cell_ref",
    "linear_norm_act", "linear_norm_act_ref", "block_gru_cell", "block_gru_cell_ref",
    "gaussian_sample", "gaussian_sample_ref", "categorical_sample", "categorical_sample_ref",
]
