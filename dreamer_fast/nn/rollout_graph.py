"""The imagination rollout captured once into a CUDA graph and replayed.

``ImagineGraph(rssm, actor, n, horizon)`` captures ``imagine(rssm, actor, start, horizon,
grad='none', noise=noise)`` (see :mod:`dreamer_fast.nn.rollout`) for one fixed
problem: the two modules, ``N = n`` start states, the horizon, and the modules' dtype and
CUDA device. Each call copies the new start states (and noise) into the graph's static
input buffers, replays the graph (one launch for the whole rollout, no Python or
per-kernel launch overhead) and returns the outputs::

    rollout = ImagineGraph(rssm, actor, n=B * T, horizon=15)
    start = {k: v.reshape(B * T, *v.shape[2:]) for k, v in post.items()}  # [B, T] posteriors
    traj = rollout(start)              # == imagine(rssm, actor, start, 15) for the same noise
    traj = rollout(start, noise=noise)  # noise: {"action": [N, H, .], "stoch": [N, H, S]}

Shapes (as for ``imagine``):

* ``start``: an RSSM state dict with batch ``[N]``: ``deter [N, D]``, ``stoch [N, S, K]``
  and ``logit [N, S, K]`` (categorical) or ``stoch``/``mean``/``std [N, S]`` (Gaussian);
  extra keys are ignored. Its tensors must have the modules' dtype and device; they
  are copied (as values: a ``start`` that requires grad is read as if detached).
* ``noise``: ``{"action": [N, H, actor.noise_size()], "stoch": [N, H, S]}`` or ``None``.
  With ``None`` the noise is drawn into the static buffers with ``Tensor.uniform_`` /
  ``normal_`` *outside* the graph before the replay, in the order and with the
  distributions of :func:`~dreamer_fast.nn.draw_imagine_noise`, so a call with ``None``
  consumes the RNG exactly as ``imagine(..., noise=None)`` does and, under the same
  seed, returns the same rollout. No random numbers are drawn inside the graph (a
  replay alone would repeat the captured draw). Caller noise is not range-checked
  (that check synchronises with the device); see ``categorical_sample`` for what
  uniform values outside ``[0, 1)`` do.
* returns ``imagine``'s dict: ``feat [N, H+1, F]``, ``deter``, ``stoch``, ``logit`` or
  ``mean``/``std`` ``[N, H+1, ...]`` (index 0 is the start), ``action [N, H, A]``;
  no autograd graph (``grad='none'``).

Only ``grad='none'`` (DreamerV2/V3: a forward rollout, then log-probs recomputed from
``feat``) is offered: ``grad='dynamics'`` needs autograd through the rollout, which
this capture does not record; call :func:`~dreamer_fast.nn.imagine` eagerly for it.

Fused (``backend='fused'``/``'auto'``) modules capture the native ``rssm_imagine`` call;
``backend='ref'`` modules capture the eager reference loop (``imagine_ref``), the
"eager + CUDA graph" baseline. A replay runs the kernels of the eager call on the same
values, so it returns the same numbers.
"""

from __future__ import annotations

import torch

from dreamer_fast.ops._dispatch import use_fused
from dreamer_fast.nn.rollout import _state_keys, check_imagine_args, imagine

_OP = "ImagineGraph"


# --------------------------------------------------------------------------------------
# Helpers (device-agnostic: also exercised on the CPU by the tests)
# --------------------------------------------------------------------------------------

def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_OP}: `{name}` must be an int >= {low}, got {value!r}")
    return value


def _model_device_dtype(rssm, actor) -> tuple[torch.device, torch.dtype]:
    """The one device and dtype of all parameters of ``rssm`` and ``actor``."""
    first = None
    for owner, module in (("rssm", rssm), ("actor", actor)):
        for name, p in module.named_parameters():
            if first is None:
                first = (owner, name, p)
                continue
            f_owner, f_name, f = first
            if p.device != f.device or p.dtype != f.dtype:
                raise ValueError(
                    f"{_OP}: `{owner}.{name}` is {p.dtype} on {p.device} but "
                    f"`{f_owner}.{f_name}` is {f.dtype} on {f.device}; `rssm` and `actor` "
                    "must live on one device with one dtype")
    if first is None:
        raise ValueError(f"{_OP}: `rssm` and `actor` have no parameters")
    return first[2].device, first[2].dtype


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise RuntimeError(
            f"{_OP} needs CUDA tensors/modules, got {device} (`rssm` and `actor` must be on a "
            "CUDA device: a CUDA graph captures CUDA work only; call imagine() eagerly "
            "elsewhere)")


def _draw_noise_(rssm, actor, noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fills ``noise`` in place with what :func:`draw_imagine_noise` would return under
    the same RNG state (``torch.rand``/``randn`` are ``empty().uniform_()``/``normal_()``,
    drawn action first, then stoch); returns ``noise``."""
    for key, uniform in (("action", actor.head == "categorical"), ("stoch", bool(rssm.classes))):
        if uniform:
            noise[key].uniform_()
        else:
            noise[key].normal_()
    return noise


def _check_like(arg: str, key: str, x: object, static: torch.Tensor) -> None:
    """``x`` (the caller's ``arg[key]``) must match the captured buffer exactly."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: `{arg}[{key!r}]` must be a torch.Tensor, got "
                        f"{type(x).__name__}")
    if x.shape != static.shape or x.dtype != static.dtype or x.device != static.device:
        raise ValueError(
            f"{_OP}: `{arg}[{key!r}]` is {tuple(x.shape)} {x.dtype} on {x.device}, but the graph "
            f"was captured for {tuple(static.shape)} {static.dtype} on {static.device}; build "
            "another ImagineGraph for another shape (pass `pool=` to share its memory)")


def _check_inputs(arg: str, given: object, static: dict[str, torch.Tensor],
                  exact_keys: bool) -> None:
    if not isinstance(given, dict):
        raise TypeError(f"{_OP}: `{arg}` must be a dict of tensors, got {type(given).__name__}")
    missing = [k for k in static if k not in given]
    if missing or (exact_keys and set(given) != set(static)):
        raise ValueError(f"{_OP}: `{arg}` must have the keys {sorted(static)}, got "
                         f"{sorted(given)}")
    for key, buf in static.items():
        _check_like(arg, key, given[key], buf)


class _ParameterWatch:
    """The parameters a capture reads, by owning module, name and address.

    A replay reads each parameter at the address it had at capture. In-place updates
    (``optimizer.step()``, ``p.copy_()``, ``load_state_dict``) keep the address and are
    seen; replacing the storage (``p.data = ...``, ``module.to(dtype)``) or the
    Parameter (``module.weight = nn.Parameter(...)``, ``load_state_dict(assign=True)``)
    is not. :meth:`check` raises on both. The captured storages are kept alive, so even an
    unchecked replay never reads freed memory.
    """

    def __init__(self, **modules) -> None:
        self._entries = [(f"{owner}.{prefix + '.' if prefix else ''}{name}", m, name, p,
                          p.data_ptr())
                         for owner, module in modules.items()
                         for prefix, m in module.named_modules()
                         for name, p in m._parameters.items() if p is not None]
        self._storages = [p.detach() for _, _, _, p, _ in self._entries]

    def check(self) -> None:
        for full, m, name, p, ptr in self._entries:
            now = m._parameters.get(name)
            if now is not p or p.data_ptr() != ptr:
                what = "Parameter object" if now is not p else "storage (`.data`)"
                raise RuntimeError(
                    f"{_OP}: parameter `{full}` was replaced since capture (its {what} "
                    "changed). The graph reads parameters by address: update them in place "
                    "(optimizer steps, `p.copy_()`, `load_state_dict`) or build a new "
                    "ImagineGraph")


# --------------------------------------------------------------------------------------
# The captured rollout
# --------------------------------------------------------------------------------------

def _capture(run, *, device: torch.device, warmup: int, pool, capture_error_mode: str):
    """Warms ``run`` up on a side stream, then captures it (the recipe of the PyTorch
    CUDA-graphs notes). Returns ``(graph, static outputs)``."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(
                    graph, pool=pool, capture_error_mode=capture_error_mode):
                outputs = run()
        except Exception as exc:
            raise RuntimeError(f"{_OP}: capturing imagine() failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    return graph, outputs


class ImagineGraph:
    """``imagine(rssm, actor, start, horizon, grad='none', noise)`` captured into a
    ``torch.cuda.CUDAGraph`` for fixed modules, ``n`` start states and ``horizon`` (see
    the module docstring for shapes and semantics).

    Args:
        rssm, actor: an :class:`~dreamer_fast.nn.RSSM` and an
            :class:`~dreamer_fast.nn.Actor` on one CUDA device with one dtype (which the
            graph is captured for). ``backend='ref'`` modules capture the eager reference
            loop.
        n: number of start states ``N``; ``horizon``: steps ``H`` (ints >= 1).
        grad: only ``'none'``; ``'dynamics'`` needs autograd, which is not captured.
        clone: default for :meth:`__call__`: return clones of the outputs (``True``) or
            the graph's static output tensors (``False``).
        warmup: eager runs on a side stream before the capture (>= 1).
        pool: a memory-pool handle (``torch.cuda.graph_pool_handle()`` or another
            graph's ``.pool``) to share with other graphs; those must not be replayed
            concurrently with this one.
        capture_error_mode: passed to ``torch.cuda.graph`` (``'global'``,
            ``'thread_local'`` or ``'relaxed'``).
        check_params: check on every call (a few microseconds) that no parameter was
            replaced since capture; raises RuntimeError naming it.

    The capture happens in the constructor: the start buffers hold ``rssm.initial(n)``
    and the noise buffers a fresh draw while warming up and capturing.

    Returned tensors and memory: the graph writes its outputs to the same static tensors
    on every replay. With ``clone=True`` (the default) a call returns fresh copies, safe
    to keep across calls. With ``clone=False`` it returns the static tensors themselves
    (``.static_outputs``): no copy, but the next call overwrites them, so clone what you
    keep. The graph holds, for its lifetime, the static inputs (``N·(D + 2·S·K)`` values
    for categorical latents, ``N·(D + 3·S)`` Gaussian, plus the noise ``N·H·(noise_size +
    S)``), the static outputs (``N·((H+1)·(F + D + 2·S·K or 3·S) + H·A)`` values; with
    fused modules ``deter`` and ``stoch`` are views of ``feat``, so
    ``N·((H+1)·(F + S·K or 2·S) + H·A)``) and its private memory pool, which keeps the
    peak of the captured call's allocations (the outputs plus the call's temporaries,
    about the peak of one eager call; nothing is kept per step under ``grad='none'``)
    reserved and unavailable to other allocations.

    Parameters are read by address: in-place updates (``optimizer.step()``,
    ``p.copy_()``, ``load_state_dict``) are seen by the next replay; a replaced parameter
    (``p.data = ...``, ``module.to(dtype)``, a new ``nn.Parameter``,
    ``load_state_dict(assign=True)``) is not, and a call raises. Module hyper-parameters
    (``unimix``, ``min_std``, heads, backend, ...) and the set of submodules are frozen at
    capture.

    Example::

        rssm = RSSM(stoch=32, classes=32, deter=512, hidden=512, action_size=A,
                    embed_size=E, cell="block_gru", norm="rms", device="cuda")
        actor = Actor(rssm.feat_size, A, head="categorical", device="cuda")
        rollout = ImagineGraph(rssm, actor, n=16 * 64, horizon=15)
        for batch in data:
            post, _ = rssm.observe(...)                      # [16, 64] posteriors
            start = {k: v.reshape(16 * 64, *v.shape[2:]) for k, v in post.items()}
            traj = rollout(start)                            # noise drawn outside the graph
            ...                                              # actor/critic losses on traj
            actor_opt.step()                                 # in place: seen next call
    """

    def __init__(self, rssm, actor, n: int, horizon: int, *, grad: str = "none",
                 clone: bool = True, warmup: int = 3, pool=None,
                 capture_error_mode: str = "global", check_params: bool = True) -> None:
        if grad != "none":
            raise ValueError(
                f"{_OP}: `grad` must be 'none', got {grad!r}; grad='dynamics' needs autograd "
                "through the rollout, which the captured graph does not record: call "
                "imagine(..., grad='dynamics') eagerly")
        self.n = _check_int("n", n, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        _check_int("warmup", warmup, 1)
        for name, flag in (("clone", clone), ("check_params", check_params)):
            if not isinstance(flag, bool):
                raise TypeError(f"{_OP}: `{name}` must be a bool, got {type(flag).__name__}")
        if capture_error_mode not in ("global", "thread_local", "relaxed"):
            raise ValueError(f"{_OP}: `capture_error_mode` must be 'global', 'thread_local' "
                             f"or 'relaxed', got {capture_error_mode!r}")
        self.device, self.dtype = _model_device_dtype(rssm, actor)
        _require_cuda(self.device)
        self.rssm, self.actor = rssm, actor
        self.clone, self.check_params = clone, check_params

        state = rssm.initial(n)
        # buffers the replays read: no autograd history (a learned initial state has one)
        self.static_start = {k: state[k].detach() for k in _state_keys(rssm)}
        like = self.static_start["deter"]
        self.static_noise = {
            "action": like.new_empty(n, horizon, actor.noise_size()),
            "stoch": like.new_empty(n, horizon, rssm.stoch)}
        _draw_noise_(rssm, actor, self.static_noise)
        check_imagine_args(rssm, actor, self.static_start, horizon, "none", self.static_noise,
                           False)
        self.fused = use_fused(rssm.backend, like) and use_fused(actor.backend, like)
        self._params = _ParameterWatch(rssm=rssm, actor=actor)

        def run():
            return imagine(rssm, actor, self.static_start, horizon, grad="none",
                           noise=self.static_noise)

        self.graph, self.static_outputs = _capture(
            run, device=self.device, warmup=warmup, pool=pool,
            capture_error_mode=capture_error_mode)

    @property
    def pool(self):
        """This graph's memory-pool handle (pass it as ``pool=`` to share the memory)."""
        return self.graph.pool()

    def replay(self) -> dict[str, torch.Tensor]:
        """Replays on the current stream from whatever the static buffers
        (``.static_start``, ``.static_noise``; write into them in place, never rebind
        them) hold; returns ``.static_outputs`` (overwritten by the next replay). No input
        copies, noise draws or checks besides the parameter check."""
        if self.check_params:
            self._params.check()
        self.graph.replay()
        return self.static_outputs

    def __call__(self, start: dict[str, torch.Tensor],
                 noise: dict[str, torch.Tensor] | None = None, *,
                 clone: bool | None = None) -> dict[str, torch.Tensor]:
        """Copies ``start`` (and ``noise``, or draws it into the static buffers), replays
        on the current stream and returns the rollout: clones of the static outputs, or
        with ``clone=False`` (per call, or as the constructor's default) the static
        outputs themselves. Inputs are checked before anything is written."""
        clone = self.clone if clone is None else clone
        _check_inputs("start", start, self.static_start, exact_keys=False)
        if noise is not None:
            _check_inputs("noise", noise, self.static_noise, exact_keys=True)
        if self.check_params:
            self._params.check()
        with torch.no_grad():
            for key, buf in self.static_start.items():
                if start[key] is not buf:
                    buf.copy_(start[key])
            if noise is None:
                _draw_noise_(self.rssm, self.actor, self.static_noise)
            else:
                for key, buf in self.static_noise.items():
                    if noise[key] is not buf:
                        buf.copy_(noise[key])
            self.graph.replay()
            if clone:
                return {k: v.clone() for k, v in self.static_outputs.items()}
        return self.static_outputs

    def __repr__(self) -> str:
        return (f"{_OP}(n={self.n}, horizon={self.horizon}, dtype={self.dtype}, "
                f"device={self.device}, fused={self.fused}, clone={self.clone})")

