"""Benchmark cases of the peer integrations: a peer's own module, eager, against the
same module accelerated by :mod:`dreamer_fast.integrations`, in one process.

The peer is imported from the user's checkout (``--path``); nothing of it is bundled.
Two instances of the peer's class with equal parameters (``load_state_dict``) are built,
one left eager ("eager"), one accelerated ("fast"); each timed run is forward + backward
of a scalar loss on every output (fixed random weights).

nm512 (NM512/dreamerv3-torch, ``networks.RSSM`` with its ``configs.yaml`` defaults:
32×32 latents, deter 512, hidden 512, SiLU, LayerNorm, learned initial state, unimix
0.01; 6 actions, embed 4096 = its 64×64 image encoder's output):

* ``observe B16xT64``: ``rssm.observe(embed, action, is_first)`` with ``state=None`` and
  ``is_first`` set at t = 0 (what ``WorldModel._train`` calls);
* ``imagine_with_action N=1024 H=15``: the prior rollout with given actions;
* ``img_step x15 N=1024``: fifteen ``img_step`` calls in a Python loop, as
  ``ImagBehavior._imagine`` calls them between its policy's samples, with the world model
  frozen and the gradient flowing to the actions (its ``imag_gradient='dynamics'``);
* ``lambda_return T=15 N=1024``: ``torch.stack(tools.lambda_return(...), dim=1)`` as
  ``models.py`` uses it, eager vs the drop-in ``nm512.lambda_return`` ("drop-in") vs
  ``nm512.install``'s fast path ("fast").

sheeprl (its dreamer_v3 ``RSSM`` at the ``dreamer_v3_S`` sizes: deter 512, dense 512,
32×32 latents, learned initial state, unimix 0.01; 6 actions, embed 4096; imported from
``--path`` with its own dependencies, lightning, hydra, ... installed):

* ``observe B16xT64``: sheeprl's train loop (one ``rssm.dynamic`` per step, time-major,
  ``is_first`` at t = 0) eager, the same loop on the accelerated module ("fast
  per-step", no code change) and :func:`dreamer_fast.integrations.sheeprl.observe`
  ("fast");
* ``imagination x15 N=1024``: fifteen ``rssm.imagination`` steps with given actions;
* ``compute_lambda_values T=15 N=1024``.

torchrl (``torchrl.objectives.value.functional`` from ``--path``, with tensordict
installed): ``td_lambda_return_estimate`` at ``[N=1024, T=15, 1]`` (time at -2, scalar
γ = 0.99, λ = 0.95, 5% ``done``), TorchRL's loop ("eager") and its vectorised form
("eager vec") against the fused drop-in ("fast").
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
from pathlib import Path

import torch

from dreamer_fast.bench.timing import Prepare

PEERS = ("nm512", "sheeprl", "torchrl")


def _normal_maker(gen: torch.Generator, dtype: torch.dtype, device: torch.device):
    """``mk(*shape)``: standard-normal draws from ``gen`` (on the CPU, so every device
    sees the same numbers), as ``dtype`` on ``device``."""
    return lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).to(device)


@contextlib.contextmanager
def _on_path(path: Path):
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))


def load_nm512(path: Path):
    """``(networks, tools)`` of a dreamerv3-torch checkout."""
    path = Path(path).resolve()
    if not (path / "networks.py").is_file() or not (path / "tools.py").is_file():
        raise SystemExit(f"dreamer-fast bench: --path {path} is not a dreamerv3-torch checkout "
                         "(networks.py, tools.py)")
    with _on_path(path):
        tools = importlib.import_module("tools")
        networks = importlib.import_module("networks")
    return networks, tools


def _loss_weights(outputs, gen: torch.Generator):
    return [torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
            for d in outputs for v in d.values()]


def _weighted(outputs, weights):
    vals = [v for d in outputs for v in d.values()]
    return sum((v * w).sum() for v, w in zip(vals, weights))


def nm512_cases(path: Path, device: torch.device, dtype: torch.dtype, *,
                B: int = 16, T: int = 64, N: int = 1024, H: int = 15, embed: int = 4096,
                actions: int = 6, deter: int = 512, hidden: int = 512, stoch: int = 32,
                classes: int = 32) -> list[tuple[str, str, dict[str, Prepare]]]:
    """``[(case, mode, {name: Prepare})]`` for the nm512 rows (module docstring)."""
    from dreamer_fast.integrations import nm512

    networks, tools = load_nm512(path)
    torch.manual_seed(0)
    kw = dict(stoch=stoch, deter=deter, hidden=hidden, rec_depth=1, discrete=classes, act="SiLU",
              norm=True, mean_act="none", std_act="sigmoid2", min_std=0.1,
              unimix_ratio=0.01, initial="learned", num_actions=actions, embed=embed,
              device=str(device))
    eager = networks.RSSM(**kw).to(device=device, dtype=dtype)
    with torch.no_grad():  # the learned initial state is zeros at init; make it non-trivial
        eager.W.normal_(0, 0.5)
    fast = copy.deepcopy(eager)
    nm512.accelerate(fast)
    gen = torch.Generator().manual_seed(1)
    mk = _normal_maker(gen, dtype, device)
    embed_x, action_x = mk(B, T, embed), mk(B, T, actions)
    is_first = torch.zeros(B, T, dtype=dtype, device=device)
    is_first[:, 0] = 1.0
    with torch.no_grad():
        probe = fast.observe(embed_x, action_x, is_first)
    w_obs = _loss_weights(probe, gen)

    def observe_case(model) -> Prepare:
        def prepare():
            model.zero_grad(set_to_none=True)

            def run():
                out = model.observe(embed_x, action_x, is_first)
                _weighted(out, w_obs).backward()
            return run
        return prepare

    start = {k: v.detach() for k, v in fast.initial(N).items()}
    start["stoch"] = torch.nn.functional.one_hot(
        torch.randint(0, classes, (N, stoch), generator=gen), classes).to(device=device,
                                                                         dtype=dtype)
    acts = mk(N, H, actions).clamp(-1, 1)
    with torch.no_grad():
        probe = [fast.imagine_with_action(acts, start)]
    w_img = _loss_weights(probe, gen)

    def imagine_case(model) -> Prepare:
        def prepare():
            model.zero_grad(set_to_none=True)

            def run():
                out = model.imagine_with_action(acts, start)
                _weighted([out], w_img).backward()
            return run
        return prepare

    def steps_case(model) -> Prepare:
        # as ImagBehavior._imagine runs under tools.RequiresGrad(actor): the world model
        # frozen, the gradient flows through the dynamics to the actions
        def prepare():
            model.requires_grad_(False)
            a = acts.clone().requires_grad_()

            def run():
                state, outs = start, []
                for t in range(H):
                    state = model.img_step(state, a[:, t])
                    outs.append(state)
                stacked = {k: torch.stack([o[k] for o in outs], 1) for k in outs[0]}
                _weighted([stacked], w_img).backward()
            return run
        return prepare

    def with_grads(prepare: Prepare, model) -> Prepare:
        def wrapped():
            model.requires_grad_(True)
            return prepare()
        return wrapped

    Tl = 15
    r, v, c = mk(Tl, N, 1), mk(Tl + 1, N, 1), torch.rand(Tl, N, 1, generator=gen)
    c = (0.99 * c).to(device=device, dtype=dtype)
    w_ret = mk(Tl, N, 1)
    proxy = nm512._TorchProxy()

    def lambda_case(kind: str) -> Prepare:
        def prepare():
            rr, vv, cc = (x.clone().requires_grad_() for x in (r, v, c))

            def run():
                args = (rr, vv[:-1], cc, vv[-1], 0.95, 0)
                if kind == "eager":
                    ret = torch.stack(tools.lambda_return(*args), dim=1)
                elif kind == "drop-in":
                    ret = torch.stack(nm512.lambda_return(*args), dim=1)
                else:
                    ret = proxy.stack(nm512._fast_lambda_return(*args), dim=1)
                torch.autograd.grad((ret * w_ret).sum(), [rr, vv, cc])
            return run
        return prepare

    return [
        (f"observe B{B}xT{T}", "forward+backward",
         {"fast": with_grads(observe_case(fast), fast),
          "eager": with_grads(observe_case(eager), eager)}),
        (f"imagine_with_action N={N} H={H}", "forward+backward",
         {"fast": with_grads(imagine_case(fast), fast),
          "eager": with_grads(imagine_case(eager), eager)}),
        (f"img_step x{H} N={N}", "forward+backward to the actions, world model frozen",
         {"fast": steps_case(fast), "eager": steps_case(eager)}),
        (f"lambda_return T={Tl} N={N}", "forward+backward",
         {"fast": lambda_case("fast"), "drop-in": lambda_case("drop-in"),
          "eager": lambda_case("eager")}),
    ]


def load_sheeprl(path: Path):
    """``(agent, models, utils)`` of sheeprl's dreamer_v3 from a checkout (its package
    dependencies must be importable)."""
    path = Path(path).resolve()
    if not (path / "sheeprl" / "algos" / "dreamer_v3" / "agent.py").is_file():
        raise SystemExit(f"dreamer-fast bench: --path {path} is not a sheeprl checkout "
                         "(sheeprl/algos/dreamer_v3/agent.py)")
    with _on_path(path):
        agent = importlib.import_module("sheeprl.algos.dreamer_v3.agent")
        models = importlib.import_module("sheeprl.models.models")
        utils = importlib.import_module("sheeprl.algos.dreamer_v3.utils")
    return agent, models, utils


def sheeprl_cases(path: Path, device: torch.device, dtype: torch.dtype, *, B: int = 16,
                  T: int = 64, N: int = 1024, H: int = 15, embed: int = 4096,
                  actions: int = 6) -> list[tuple[str, str, dict[str, Prepare]]]:
    """``[(case, mode, {name: Prepare})]`` for the sheeprl rows (module docstring)."""
    from torch import nn

    from dreamer_fast.integrations import sheeprl as df_sheeprl

    agent, models, utils = load_sheeprl(path)
    torch.manual_seed(0)
    S, K, D, U = 32, 32, 512, 512
    ln = {"eps": 1e-3}
    rec = agent.RecurrentModel(input_size=S * K + actions, recurrent_state_size=D,
                               dense_units=U, layer_norm_cls=models.LayerNorm,
                               layer_norm_kw=ln)

    def mlp(fan_in):
        return models.MLP(input_dims=fan_in, output_dim=S * K, hidden_sizes=[U],
                          activation=nn.SiLU, layer_args={"bias": False}, flatten_dim=None,
                          norm_layer=[models.LayerNorm],
                          norm_args=[{**ln, "normalized_shape": U}])

    eager = agent.RSSM(recurrent_model=rec, representation_model=mlp(D + embed),
                       transition_model=mlp(D), distribution_cfg={}, discrete=K,
                       unimix=0.01, learnable_initial_recurrent_state=True)
    eager = eager.to(device=device, dtype=dtype)
    with torch.no_grad():
        eager.initial_recurrent_state.normal_(0, 0.5)
    fast = copy.deepcopy(eager)
    df_sheeprl.accelerate(fast)
    gen = torch.Generator().manual_seed(1)
    mk = _normal_maker(gen, dtype, device)
    embed_x, action_x = mk(T, B, embed), mk(T, B, actions)
    is_first = torch.zeros(T, B, 1, dtype=dtype, device=device)
    is_first[0] = 1.0
    w = [mk(T, B, D), mk(T, B, S, K), mk(T, B, S, K), mk(T, B, S * K), mk(T, B, S * K)]

    def loop(model):
        post = torch.zeros(1, B, S, K, dtype=dtype, device=device)
        h = torch.zeros(1, B, D, dtype=dtype, device=device)
        outs = []
        for i in range(T):
            h, post, prior, pl, ql = model.dynamic(post, h, action_x[i:i + 1],
                                                   embed_x[i:i + 1], is_first[i:i + 1])
            outs.append((h, post, prior, pl, ql))
        return [torch.cat([o[k] for o in outs], 0) for k in range(5)]

    def observe_case(kind) -> Prepare:
        model = eager if kind == "eager" else fast

        def prepare():
            model.zero_grad(set_to_none=True)

            def run():
                out = (df_sheeprl.observe(model, embed_x, action_x, is_first)
                       if kind == "fast" else loop(model))
                sum((x * v).sum() for x, v in zip(out, w)).backward()
            return run
        return prepare

    h0 = mk(1, N, D).tanh()
    z0 = torch.nn.functional.one_hot(torch.randint(0, K, (1, N, S), generator=gen), K).to(
        device=device, dtype=dtype).reshape(1, N, S * K)
    acts = mk(H, 1, N, actions).clamp(-1, 1)
    wi = [mk(1, N, S, K) for _ in range(H)], [mk(1, N, D) for _ in range(H)]

    def imagine_case(model) -> Prepare:
        def prepare():
            model.zero_grad(set_to_none=True)

            def run():
                prior, h, loss = z0, h0, 0.0
                for t in range(H):
                    prior, h = model.imagination(prior, h, acts[t])
                    loss = loss + (prior * wi[0][t]).sum() + (h * wi[1][t]).sum()
                    prior = prior.reshape(1, N, S * K)
                loss.backward()
            return run
        return prepare

    r, v = mk(H, N, 1), mk(H, N, 1)
    c = (0.99 * torch.rand(H, N, 1, generator=gen)).to(device=device, dtype=dtype)
    w_ret = mk(H, N, 1)

    def lambda_case(fn) -> Prepare:
        def prepare():
            rr, vv, cc = (x.clone().requires_grad_() for x in (r, v, c))

            def run():
                torch.autograd.grad((fn(rr, vv, cc, 0.95) * w_ret).sum(), [rr, vv, cc])
            return run
        return prepare

    return [
        (f"observe B{B}xT{T}", "forward+backward",
         {"fast": observe_case("fast"), "fast per-step": observe_case("per-step"),
          "eager": observe_case("eager")}),
        (f"imagination x{H} N={N}", "forward+backward",
         {"fast": imagine_case(fast), "eager": imagine_case(eager)}),
        (f"compute_lambda_values T={H} N={N}", "forward+backward",
         {"fast": lambda_case(df_sheeprl.compute_lambda_values),
          "eager": lambda_case(utils.compute_lambda_values)}),
    ]


def load_torchrl(path: Path):
    path = Path(path).resolve()
    if not (path / "torchrl" / "objectives" / "value" / "functional.py").is_file():
        raise SystemExit(f"dreamer-fast bench: --path {path} is not a TorchRL checkout "
                         "(torchrl/objectives/value/functional.py)")
    with _on_path(path):
        return importlib.import_module("torchrl.objectives.value.functional")


def torchrl_cases(path: Path, device: torch.device, dtype: torch.dtype, *, N: int = 1024,
                  T: int = 15) -> list[tuple[str, str, dict[str, Prepare]]]:
    from dreamer_fast.integrations import torchrl as df_torchrl

    functional = load_torchrl(path)
    gen = torch.Generator().manual_seed(0)
    mk = _normal_maker(gen, dtype, device)
    nv, r, w = mk(N, T, 1), mk(N, T, 1), mk(N, T, 1)
    done = (torch.rand(N, T, 1, generator=gen) < 0.05).to(device)

    def case(fn) -> Prepare:
        def prepare():
            v, rr = nv.clone().requires_grad_(), r.clone().requires_grad_()

            def run():
                out = fn(0.99, 0.95, v, rr, done, done)
                torch.autograd.grad((out * w).sum(), [v, rr])
            return run
        return prepare

    return [(f"td_lambda_return_estimate N={N} T={T}", "forward+backward",
             {"fast": case(df_torchrl.td_lambda_return_estimate),
              "eager": case(functional.td_lambda_return_estimate),
              "eager vec": case(functional.vec_td_lambda_return_estimate)})]


def cases(peer: str, path: Path, device: torch.device, dtype: torch.dtype):
    if peer == "torchrl":
        return torchrl_cases(path, device, dtype)
    if peer == "nm512":
        return nm512_cases(path, device, dtype)
    if peer == "sheeprl":
        return sheeprl_cases(path, device, dtype)
    raise SystemExit(f"dreamer-fast bench: --peer {peer!r}: expected one of {PEERS}")
