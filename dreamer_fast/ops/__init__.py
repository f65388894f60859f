"""Fast ops and their pure-PyTorch references (``<op>_ref``, same signature).

| op | equivalent to |
|---|---|
| ``lambda_return(reward, value, pcont, bootstrap, lambda_, axis)`` | DreamerV1/V2 λ-return |
| ``reverse_scan(inputs, decay, init, axis)`` | ``R[t] = inputs[t] + decay[t] * R[t+1]`` |
"""

from dreamer_fast.ops.scan import lambda_return, lambda_return_ref, reverse_scan, reverse_scan_ref

__all__ = ["lambda_return", "lambda_return_ref", "reverse_scan", "reverse_scan_ref"]
