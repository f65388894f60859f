"""Fast ops and their pure-PyTorch references (``<op>_ref``, same signature).

| op | equivalent to |
|---|---|
| ``lambda_return(reward, value, pcont, bootstrap, lambda_, axis)`` | DreamerV1/V2 λ-return |
| ``reverse_scan(inputs, decay, init, axis)`` | ``R[t] = inputs[t] + decay[t] * R[t+1]`` |
| ``gaussian_sample(stats, noise, min_std)`` | ``mean + (softplus(raw) + min_std) * noise`` |
| ``categorical_sample(logits, uniform, unimix)`` | straight-through one-hot of ``(1-unimix) softmax + unimix/K`` |
"""

from dreamer_fast.ops.heads import (categorical_sample, categorical_sample_ref, gaussian_sample,
                                    gaussian_sample_ref)
from dreamer_fast.ops.scan import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

__all__ = ["categorical_sample", "categorical_sample_ref", "gaussian_sample",
           "gaussian_sample_ref", "lambda_return", "lambda_return_ref", "reverse_scan",
           "reverse_scan_ref"]
