"""Fast ops and their pure-PyTorch references (``<op>_ref``, same signature).

They take tensors and plain specs only (no ``torch.nn`` modules); ``dreamer_fast.nn``
builds the modules on them.

| family | op | equivalent to |
|---|---|---|
| scan | ``lambda_return(reward, value, pcont, bootstrap, lambda_, axis)`` | DreamerV1/V2 λ-return |
| scan | ``reverse_scan(inputs, decay, init, axis)`` | ``R[t] = inputs[t] + decay[t] * R[t+1]`` |
| cells | ``gru_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)`` | ``torch.nn.GRUCell`` |
| cells | ``ln_gru_cell(input, hx, weight, norm_weight, norm_bias, update_bias, eps, state_first)`` | DreamerV2 LayerNorm GRU (norm optional, cat(x, h) or cat(h, x)) |
| cells | ``block_gru_cell(deter, stoch, action, in_params, hidden_params, gru_weight, gru_bias, blocks, act, eps)`` | DreamerV3 block GRU core |
| dense | ``linear_norm_act(input, weight, bias, norm_weight, norm_bias, norm, act, eps)`` | ``act(norm(x W^T + b))`` |
| heads | ``gaussian_sample(stats, noise, min_std, std_act, mean_act, min_std_mode)`` | ``mean_act(m) + (std_act(raw) + min_std) * noise`` (or ``max(std_act(raw), min_std)``) |
| heads | ``categorical_sample(logits, uniform, unimix)`` | straight-through one-hot of ``(1-unimix) softmax + unimix/K`` |
| rssm | ``rssm_observe(params, spec, embed, action, keep, deter, stoch, prior_noise, post_noise)`` | ``T`` RSSM posterior steps (prior + posterior), batch-major |
| rssm | ``rssm_imagine(params, spec, deter, stoch, actions, action_noise, stoch_noise, horizon, actor_params, actor_spec, feat_out)`` | ``H`` prior steps, actions given or drawn by the actor |
| rssm | ``rssm_initial(params, spec)`` | the initial state: zeros or ``tanh(W)`` and the prior's mode |

Specs (:mod:`dreamer_fast.ops.rssm_spec`): ``DenseSpec``, ``RSSMSpec``, ``ActorSpec``
describe the layer structure and constants of the rssm ops' flat parameter lists.
"""

from dreamer_fast.ops.cells import (block_gru_cell, block_gru_cell_ref, gru_cell, gru_cell_ref,
                                    ln_gru_cell, ln_gru_cell_ref)
from dreamer_fast.ops.dense import linear_norm_act, linear_norm_act_ref
from dreamer_fast.ops.heads import (categorical_sample, categorical_sample_ref, gaussian_sample,
                                    gaussian_sample_ref)
from dreamer_fast.ops.rssm import (rssm_imagine, rssm_imagine_ref, rssm_initial, rssm_observe,
                                   rssm_observe_ref)
from dreamer_fast.ops.rssm_spec import ActorSpec, DenseSpec, RSSMSpec
from dreamer_fast.ops.scan import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

__all__ = [
    "lambda_return", "lambda_return_ref", "reverse_scan", "reverse_scan_ref",
    "gru_cell", "gru_cell_ref", "ln_gru_cell", "ln_gru_cell_ref",
    "linear_norm_act", "linear_norm_act_ref", "block_gru_cell", "block_gru_cell_ref",
    "gaussian_sample", "gaussian_sample_ref", "categorical_sample", "categorical_sample_ref",
    "rssm_observe", "rssm_observe_ref", "rssm_imagine", "rssm_imagine_ref", "rssm_initial",
    "DenseSpec", "RSSMSpec", "ActorSpec",
]
