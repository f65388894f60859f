"""Every CUDA launcher, forward and backward, running its real kernel file on the host
emulation of CUDA (``dreamer_fast._cuda_emu``, csrc/emu/; marker ``cuda_emu``), against a
reference: float64 for float64 / float32 results, and for float16 / bfloat16 a reference
that reads the same stored inputs, computes in float32 and stores where the kernel
stores. Comparisons are in ulps (cuda_emu_support.assert_ulp_close). Every output buffer
starts as NaN, so an element a kernel does not write fails the comparison.

Shapes stress the indexing: sizes that are not multiples of the block (256 threads, 8
rows per block for the warp kernels) or of the warp, fewer than 32, 1, empty, 255 and
more classes for the categorical kernels (every register-chunk variant of the warp
kernel), odd row widths, non-default eps. The threads of a block run in a seeded random
order between exchanges, so a missing __syncwarp gives wrong results here.

The same cases run on a GPU (backend ``cuda``, marker ``cuda``) when a CUDA build of the
extension and a device are there: the device results are compared with the reference
and with the emulated results.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import zlib

import pytest
import torch
import torch.nn.functional as F

from conftest import make_generator
from cuda_emu_support import (
    BACKENDS,
    EMU,
    Backend,
    acc_dtype,
    assert_ulp_close,
    ref_dtype,
    require_emu,
)
import dreamer_fast.ops as ops

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16",
             torch.float16: "f16"}
CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"


def dtype_params():
    return [pytest.param(d, id=DTYPE_IDS[d]) for d in DTYPES]


@pytest.fixture(autouse=True)
def _shuffled_schedule(request):
    """Threads of a block in a seeded random order between exchanges (every round)."""
    if EMU is not None:
        EMU.set_schedule(2, zlib.crc32(request.node.nodeid.encode()))
    yield
    if EMU is not None:
        EMU.set_schedule(0, 0)


def stored(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def up(x, dtype):
    """The stored value in the reference's compute dtype (None stays None)."""
    return None if x is None else x.to(ref_dtype(dtype))


def run(backend: str, fn):
    """fn(Backend) -> dict of outputs (on the CPU). For the device backend the same case
    also runs emulated, and the two must agree."""
    b = Backend(backend)
    outs = {k: (v.cpu() if v is not None else None) for k, v in fn(b).items()}
    if backend == "cuda" and EMU is not None:
        emu = fn(Backend("emu"))
        for k, v in outs.items():
            if v is not None:
                dt = v.dtype
                assert_ulp_close(v, emu[k], dt, f"device vs emulated {k}", n_store=2)
    return outs


def check(outs: dict, refs: dict, dtype: torch.dtype, acc_names=(), scales=None) -> None:
    """Every output against its reference; names in acc_names are stored in the
    accumulation dtype (row stats, column sums); scales: see assert_ulp_close."""
    for name, ref in refs.items():
        got = outs[name]
        store = acc_dtype(dtype) if name in acc_names else dtype
        assert got.dtype == store, f"{name}: dtype {got.dtype}, expected {store}"
        assert_ulp_close(got, ref, store, name, acc=acc_dtype(dtype),
                         scale=(scales or {}).get(name))


def norm_grad_scale(dz, dy, w, stats) -> float:
    """The terms of a normalisation's input gradient: max|dz|, or max rstd * max|dy w|."""
    g = dy * w if w is not None else dy
    terms = stats[:, 1].abs().max().item() * g.abs().max().item() if g.numel() else 0.0
    return max(dz.abs().max().item() if dz.numel() else 0.0, terms)


# ======================================================================================
# scan: reverse_scan / lambda_return (time-major [T, N], one thread per column)
# ======================================================================================

SCAN_SHAPES = [(1, 1), (5, 1), (3, 31), (4, 33), (2, 257), (17, 300), (64, 7), (3, 0)]


def reverse_scan_ref(x, d, init):
    out, carry = torch.empty_like(x), init.clone()
    for t in reversed(range(x.shape[0])):
        carry = x[t] + d[t] * carry
        out[t] = carry
    return out


def reverse_scan_backward_ref(g, d, init, out):
    T = g.shape[0]
    G, prev = torch.zeros_like(init), torch.zeros_like(init)
    gx, gd = torch.empty_like(g), torch.empty_like(g)
    for t in range(T):
        G = g[t] + prev * G
        gx[t] = G
        gd[t] = G * (out[t + 1] if t + 1 < T else init)
        prev = d[t]
    return gx, gd, prev * G


def lambda_return_ref(r, v, p, boot, lam):
    lam = torch.tensor(lam, dtype=r.dtype)
    out, carry, nv = torch.empty_like(r), boot.clone(), boot.clone()
    for t in reversed(range(r.shape[0])):
        carry = r[t] + p[t] * ((1 - lam) * nv + lam * carry)
        out[t] = carry
        nv = v[t]
    return out


def lambda_return_backward_ref(g, v, p, boot, out, lam):
    lam = torch.tensor(lam, dtype=g.dtype)
    T = g.shape[0]
    G, prev = torch.zeros_like(boot), torch.zeros_like(boot)
    gr, gv, gp = torch.empty_like(g), torch.empty_like(g), torch.empty_like(g)
    for t in range(T):
        gv[t] = (1 - lam) * prev * G
        G = g[t] + lam * prev * G
        gr[t] = G
        last = t + 1 == T
        nv, nr = (boot, boot) if last else (v[t + 1], out[t + 1])
        gp[t] = G * ((1 - lam) * nv + lam * nr)
        prev = p[t]
    return gr, gv, gp, prev * G


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,N", SCAN_SHAPES, ids=[f"T{t}N{n}" for t, n in SCAN_SHAPES])
def test_reverse_scan(backend, dtype, T, N):
    gen = make_generator("reverse_scan", T, N, dtype)
    x = stored(torch.randn(T, N, generator=gen, dtype=torch.float64), dtype)
    d = stored(torch.rand(T, N, generator=gen, dtype=torch.float64) * 0.98, dtype)
    init = stored(torch.randn(N, generator=gen, dtype=torch.float64), dtype)
    g = stored(torch.randn(T, N, generator=gen, dtype=torch.float64), dtype)

    def case(b):
        out = b.nan((T, N), dtype)
        b.launchers.reverse_scan_forward(b.to(x), b.to(d), b.to(init), out, T, N)
        gx, gd, gi = b.nan((T, N), dtype), b.nan((T, N), dtype), b.nan((N,), dtype)
        b.launchers.reverse_scan_backward(b.to(g), b.to(d), b.to(init), out, gx, gd, gi, T, N)
        return {"out": out, "ginputs": gx, "gdecay": gd, "ginit": gi}

    o = run(backend, case)
    check(o, {"out": reverse_scan_ref(up(x, dtype), up(d, dtype), up(init, dtype))}, dtype)
    gx, gd, gi = reverse_scan_backward_ref(up(g, dtype), up(d, dtype), up(init, dtype),
                                           up(o["out"], dtype))
    check(o, {"ginputs": gx, "gdecay": gd, "ginit": gi}, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("T,N,lam", [(t, n, lam) for (t, n), lam in zip(
    SCAN_SHAPES, itertools.cycle([0.95, 0.0, 1.0, 0.5]))],
    ids=[f"T{t}N{n}" for t, n in SCAN_SHAPES])
def test_lambda_return(backend, dtype, T, N, lam):
    gen = make_generator("lambda_return", T, N, dtype)
    r = stored(torch.randn(T, N, generator=gen, dtype=torch.float64), dtype)
    v = stored(torch.randn(T, N, generator=gen, dtype=torch.float64), dtype)
    p = stored(torch.rand(T, N, generator=gen, dtype=torch.float64) * 0.99, dtype)
    boot = stored(torch.randn(N, generator=gen, dtype=torch.float64), dtype)
    g = stored(torch.randn(T, N, generator=gen, dtype=torch.float64), dtype)

    def case(b):
        out = b.nan((T, N), dtype)
        b.launchers.lambda_return_forward(b.to(r), b.to(v), b.to(p), b.to(boot), lam, out, T, N)
        gr, gv, gp = (b.nan((T, N), dtype) for _ in range(3))
        gb = b.nan((N,), dtype)
        b.launchers.lambda_return_backward(b.to(g), b.to(v), b.to(p), b.to(boot), out, lam, gr,
                                           gv, gp, gb, T, N)
        return {"out": out, "greward": gr, "gvalue": gv, "gpcont": gp, "gbootstrap": gb}

    o = run(backend, case)
    U = lambda t: up(t, dtype)  # noqa: E731
    check(o, {"out": lambda_return_ref(U(r), U(v), U(p), U(boot), lam)}, dtype)
    gr, gv, gp, gb = lambda_return_backward_ref(U(g), U(v), U(p), U(boot), U(o["out"]), lam)
    check(o, {"greward": gr, "gvalue": gv, "gpcont": gp, "gbootstrap": gb}, dtype)


# ======================================================================================
# cells: GRU gates (thread per element), LayerNorm GRU (warp per row), block GRU gates
# ======================================================================================

def gru_gates_ref(gi, gh, hx):
    ir, iz, in_ = gi.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * hx, torch.cat([r, z, n, hn], 1)


def gru_gates_backward_ref(dy, ws, hx):
    r, z, n, hn = ws.chunk(4, 1)
    dn = dy * (1 - z) * (1 - n * n)
    dz = dy * (hx - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    return torch.cat([dr, dz, dn], 1), torch.cat([dr, dz, dn * r], 1), dy * z


GRU_SHAPES = [(1, 1), (3, 5), (7, 37), (33, 40), (0, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B,H", GRU_SHAPES, ids=[f"B{b}H{h}" for b, h in GRU_SHAPES])
def test_gru_gates(backend, dtype, B, H):
    gen = make_generator("gru", B, H, dtype)
    gi = stored(torch.randn(B, 3 * H, generator=gen, dtype=torch.float64) * 2, dtype)
    gh = stored(torch.randn(B, 3 * H, generator=gen, dtype=torch.float64) * 2, dtype)
    hx = stored(torch.randn(B, H, generator=gen, dtype=torch.float64), dtype)
    dy = stored(torch.randn(B, H, generator=gen, dtype=torch.float64), dtype)

    def case(b):
        hy, ws = b.nan((B, H), dtype), b.nan((B, 4 * H), dtype)
        b.launchers.gru_forward(b.to(gi), b.to(gh), b.to(hx), hy, ws)
        dgi, dgh, dh = b.nan((B, 3 * H), dtype), b.nan((B, 3 * H), dtype), b.nan((B, H), dtype)
        b.launchers.gru_backward(b.to(dy), ws, b.to(hx), dgi, dgh, dh)
        return {"hy": hy, "workspace": ws, "dgi": dgi, "dgh": dgh, "dh_direct": dh}

    o = run(backend, case)
    hy, ws = gru_gates_ref(up(gi, dtype), up(gh, dtype), up(hx, dtype))
    check(o, {"hy": hy, "workspace": ws}, dtype)
    # the backward reads the workspace as stored
    dgi, dgh, dh = gru_gates_backward_ref(up(dy, dtype), up(o["workspace"], dtype), up(hx, dtype))
    check(o, {"dgi": dgi, "dgh": dgh, "dh_direct": dh}, dtype)
    if dtype == torch.float64 and B * H:  # the closed form is the gates' gradient
        leaves = [t.clone().requires_grad_() for t in (gi, gh, hx)]
        grads = torch.autograd.grad(gru_gates_ref(*leaves)[0], leaves, dy)
        for name, gr in zip(("dgi", "dgh", "dh_direct"), grads):
            assert_ulp_close(o[name], gr, dtype, f"{name} vs autograd")


def ln_gru_ref(parts, hx, gamma, beta, eps, ub):
    mean = parts.mean(1, keepdim=True)
    var = ((parts - mean) ** 2).mean(1, keepdim=True)
    rstd = 1 / torch.sqrt(var + eps)
    y = (parts - mean) * rstd * gamma + beta
    yr, yc, yu = y.chunk(3, 1)
    r = torch.sigmoid(yr)
    c = torch.tanh(r * yc)
    u = torch.sigmoid(yu + ub)
    return u * c + (1 - u) * hx, torch.cat([mean, rstd], 1)


LN_GRU_CASES = [(1, 1, 1e-3, -1.0), (1, 7, 1e-5, -1.0), (5, 11, 0.1, 0.5), (9, 45, 1e-3, -1.0),
                (17, 33, 1e-4, 0.0), (0, 3, 1e-3, -1.0), (3, 0, 1e-3, -1.0)]


def ln_gru_inputs(B, H, dtype, tag):
    gen = make_generator(tag, B, H, dtype)
    f = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return (stored(f(B, 3 * H) * 2 + 0.5, dtype), stored(f(B, H), dtype),
            stored(1 + 0.3 * f(3 * H), dtype), stored(0.2 * f(3 * H), dtype),
            stored(f(B, H), dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B,H,eps,ub", LN_GRU_CASES,
                         ids=[f"B{b}H{h}eps{e:g}" for b, h, e, _ in LN_GRU_CASES])
def test_ln_gru(backend, dtype, B, H, eps, ub):
    parts, hx, gamma, beta, dh_out = ln_gru_inputs(B, H, dtype, "ln_gru")
    acc = acc_dtype(dtype)

    def case(b):
        if b.name == "emu":
            b.launchers.reset_counters()
        hy, stats = b.nan((B, H), dtype), b.nan((B, 2), acc)
        b.launchers.ln_gru_forward(b.to(parts), b.to(hx), b.to(gamma), b.to(beta), eps, ub, hy,
                                   stats)
        if b.name == "emu" and B:  # the LayerNorm sums really ran as 32-lane shuffles
            assert b.launchers.counters()["max_exchange_lanes"] == 32
        dys, dyxs = b.nan((3 * H,), acc), b.nan((3 * H,), acc)
        dparts, dh = b.nan((B, 3 * H), dtype), b.nan((B, H), dtype)
        b.launchers.ln_gru_backward(b.to(dh_out), b.to(parts), b.to(hx), b.to(gamma),
                                    b.to(beta), stats, ub, dys, dyxs, dparts, dh)
        return {"hy": hy, "stats": stats, "dy_sum": dys, "dy_xhat_sum": dyxs, "dparts": dparts,
                "dh_direct": dh}

    o = run(backend, case)
    leaves = [up(t, dtype).requires_grad_() for t in (parts, hx, gamma, beta)]
    hy, stats = ln_gru_ref(*leaves, eps, ub)
    refs = {"hy": hy.detach(), "stats": stats.detach()}
    if B * H:
        dparts, dh, dgamma, dbeta = torch.autograd.grad(hy, leaves, up(dh_out, dtype))
        refs.update(dparts=dparts, dh_direct=dh, dy_sum=dbeta, dy_xhat_sum=dgamma)
    check(o, refs, dtype, acc_names=("stats", "dy_sum", "dy_xhat_sum"))


def block_gru_ref(parts, hx, G, ub):
    B, D = hx.shape
    p = parts.view(B, G, 3, D // G)
    r = torch.sigmoid(p[:, :, 0])
    c = torch.tanh(r * p[:, :, 1])
    u = torch.sigmoid(p[:, :, 2] + ub)
    return (u * c + (1 - u) * hx.view(B, G, D // G)).reshape(B, D)


BLOCK_GRU_CASES = [(1, 4, 1), (3, 12, 4), (5, 40, 8), (37, 9, 3), (0, 8, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B,D,G", BLOCK_GRU_CASES,
                         ids=[f"B{b}D{d}G{g}" for b, d, g in BLOCK_GRU_CASES])
def test_block_gru_gates(backend, dtype, B, D, G):
    gen = make_generator("block_gru", B, D, G, dtype)
    parts = stored(torch.randn(B, 3 * D, generator=gen, dtype=torch.float64) * 2, dtype)
    hx = stored(torch.randn(B, D, generator=gen, dtype=torch.float64), dtype)
    dy = stored(torch.randn(B, D, generator=gen, dtype=torch.float64), dtype)
    ub = -1.0

    def case(b):
        hy = b.nan((B, D), dtype)
        b.launchers.block_gru_forward(b.to(parts), b.to(hx), G, ub, hy)
        dparts, dh = b.nan((B, 3 * D), dtype), b.nan((B, D), dtype)
        b.launchers.block_gru_backward(b.to(dy), b.to(parts), b.to(hx), G, ub, dparts, dh)
        return {"hy": hy, "dparts": dparts, "dh_direct": dh}

    o = run(backend, case)
    leaves = [up(t, dtype).requires_grad_() for t in (parts, hx)]
    hy = block_gru_ref(*leaves, G, ub)
    refs = {"hy": hy.detach()}
    if B:
        dparts, dh = torch.autograd.grad(hy, leaves, up(dy, dtype))
        refs.update(dparts=dparts, dh_direct=dh)
    check(o, refs, dtype)


# ======================================================================================
# dense epilogue: act(norm(z)), one warp per row
# ======================================================================================

ACTS = {0: lambda y: y, 1: F.silu, 2: lambda y: torch.where(y > 0, y, torch.exp(y) - 1),
        3: torch.tanh, 4: F.gelu, 5: torch.sigmoid}
ACT_NAMES = {0: "none", 1: "silu", 2: "elu", 3: "tanh", 4: "gelu", 5: "sigmoid"}


def dense_epilogue_ref(z, w, b, norm, act, eps):
    """(out, stats, y, xhat): the epilogue and the intermediates its backward sums."""
    B, N = z.shape
    if norm == 0:
        mean, rstd = torch.zeros(B, 1, dtype=z.dtype), torch.ones(B, 1, dtype=z.dtype)
        y = xhat = z
    else:
        if norm == 1:
            mean = z.mean(1, keepdim=True)
            rstd = 1 / torch.sqrt(((z - mean) ** 2).mean(1, keepdim=True) + eps)
        else:
            mean = torch.zeros(B, 1, dtype=z.dtype)
            rstd = 1 / torch.sqrt((z * z).mean(1, keepdim=True) + eps)
        xhat = (z - mean) * rstd
        y = xhat * w if w is not None else xhat
        y = y + b if b is not None else y
    return ACTS[act](y), torch.cat([mean, rstd], 1), y, xhat


# (B, N, norm, affine, act, eps, sums): norm 0 none / 1 layer / 2 rms; affine "wb" / "w" /
# ""; sums: the column sums the backward is asked for ("dy" Σ dy, "dyx" Σ dy ⊙ x̂), which
# with the affine parameters selects the row function's compile-time or run-time variant
DENSE_CASES = [
    (1, 1, 1, "wb", 1, 1e-3, "dy,dyx"), (1, 33, 1, "wb", 2, 1e-3, "dy,dyx"),
    (9, 255, 1, "wb", 1, 1e-5, "dy,dyx"), (13, 17, 1, "wb", 3, 0.1, "dyx"),
    (5, 64, 1, "wb", 4, 1e-3, "dy,dyx"), (7, 31, 1, "wb", 5, 1e-3, "dy"),
    (6, 40, 1, "wb", 0, 1e-3, "dy,dyx"), (11, 19, 1, "w", 1, 1e-3, "dy,dyx"),
    (4, 23, 1, "", 2, 1e-3, "dy,dyx"), (9, 45, 2, "w", 1, 1e-4, "dy,dyx"),
    (10, 9, 2, "w", 3, 1e-3, "dyx"), (3, 7, 2, "", 3, 1e-3, "dy,dyx"),
    (17, 5, 0, "", 1, 1e-3, ""), (8, 50, 0, "", 4, 1e-3, ""), (0, 5, 1, "wb", 1, 1e-3, "dy,dyx"),
    (3, 0, 1, "wb", 1, 1e-3, "dy,dyx"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("B,N,norm,affine,act,eps,sums", DENSE_CASES, ids=[
    f"B{b}N{n}norm{nm}{af}-{ACT_NAMES[a]}-eps{e:g}-sums[{sm}]"
    for b, n, nm, af, a, e, sm in DENSE_CASES])
def test_dense_epilogue(backend, dtype, B, N, norm, affine, act, eps, sums):
    gen = make_generator("dense", B, N, norm, affine, act, dtype)
    f = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    z = stored(f(B, N) * 2 + 0.3, dtype)
    w = stored(1 + 0.3 * f(N), dtype) if "w" in affine else None
    bias = stored(0.2 * f(N), dtype) if "b" in affine else None
    dout = stored(f(B, N), dtype)
    acc = acc_dtype(dtype)
    sums = set(filter(None, sums.split(",")))

    def case(b):
        out, stats = b.nan((B, N), dtype), b.nan((B, 2), acc)
        b.launchers.epilogue_forward(b.to(z), b.to(w), b.to(bias), norm, act, eps, out, stats)
        dys = b.nan((N,), acc) if "dy" in sums else None
        dyxs = b.nan((N,), acc) if "dyx" in sums else None
        dz = b.nan((B, N), dtype)
        b.launchers.epilogue_backward(b.to(dout), b.to(z), stats, b.to(w), b.to(bias), norm, act,
                                      eps, dys, dyxs, dz)
        return {"out": out, "stats": stats, "dz": dz, "dy_sum": dys, "dy_xhat_sum": dyxs}

    o = run(backend, case)
    zr = up(z, dtype).requires_grad_()
    out, stats, y, xhat = dense_epilogue_ref(zr, up(w, dtype), up(bias, dtype), norm, act, eps)
    refs = {"out": out.detach(), "stats": stats.detach()}
    if B * N:
        dz, dy = torch.autograd.grad(out, [zr, y], up(dout, dtype))
        refs["dz"] = dz
        scales = {"dz": norm_grad_scale(dz, dy, up(w, dtype), stats.detach())}
        if "dy" in sums:
            refs["dy_sum"] = dy.sum(0)
        if "dyx" in sums:
            refs["dy_xhat_sum"] = (dy * xhat.detach()).sum(0)
    else:
        scales = {}
    check(o, refs, dtype, acc_names=("stats", "dy_sum", "dy_xhat_sum"), scales=scales)


# ======================================================================================
# heads: Gaussian and normal-action (thread per element), categorical (thread per row for
# K <= 8, warp per row above: 1, 2, 4, 8 register chunks and the re-reading kernel)
# ======================================================================================

# (R, S, min_std, std_act, mean_act): every std_act with and without tanh5
GAUSS_CASES = [(1, 1, 0.1, "softplus", "none"), (3, 17, 0.1, "softplus", "none"),
               (37, 9, 0.0, "softplus", "none"), (300, 3, 0.5, "softplus", "none"),
               (0, 4, 0.1, "softplus", "none"), (37, 9, 0.1, "softplus", "tanh5"),
               (3, 17, 0.1, "abs", "tanh5"), (37, 9, 0.5, "abs", "none"),
               (37, 9, 0.0, "sigmoid", "none"), (300, 3, 0.1, "sigmoid", "tanh5"),
               (300, 3, 0.5, "sigmoid2", "tanh5"), (37, 9, 0.1, "sigmoid2", "none")]
# and the clamp max(std_act(raw), min_std) (a min_std above part of the std_act values)
GAUSS_CASES = [c + ("add",) for c in GAUSS_CASES] + [(37, 9, 0.6, "softplus", "none", "clamp"),
                                                     (300, 3, 0.6, "sigmoid", "tanh5", "clamp")]
# which upstream gradients exist: sample / mean / std
GRAD_SUBSETS = [("sample", "mean", "std"), ("sample",), ("mean", "std"), ()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R,S,min_std,std_act,mean_act,min_std_mode", GAUSS_CASES,
                         ids=[f"R{r}S{s}min{m:g}-{sa}-{ma}-{mm}"
                              for r, s, m, sa, ma, mm in GAUSS_CASES])
def test_gaussian_sample(backend, dtype, R, S, min_std, std_act, mean_act, min_std_mode):
    gen = make_generator("gaussian", R, S, dtype, std_act, mean_act, min_std_mode)
    # the kernels' codes: the order of the names (heads_math.h GaussianStdAct / MeanAct)
    codes = dict(std_act=ops.heads.GAUSSIAN_STD_ACTS.index(std_act),
                 mean_act=ops.heads.GAUSSIAN_MEAN_ACTS.index(mean_act),
                 min_std_mode=ops.heads.GAUSSIAN_MIN_STD_MODES.index(min_std_mode))
    stats = stored(torch.randn(R, 2 * S, generator=gen, dtype=torch.float64) * 3, dtype)
    noise = stored(torch.randn(R, S, generator=gen, dtype=torch.float64), dtype)
    upstream = {k: stored(torch.randn(R, S, generator=gen, dtype=torch.float64), dtype)
                for k in ("sample", "mean", "std")}
    grads = GRAD_SUBSETS[(R + S) % len(GRAD_SUBSETS)]

    def case(b):
        sample, mean, std = (b.nan((R, S), dtype) for _ in range(3))
        b.launchers.gaussian_forward(b.to(stats), b.to(noise), min_std, sample, mean, std,
                                     **codes)
        gs, gn = b.nan((R, 2 * S), dtype), b.nan((R, S), dtype)
        g = {k: b.to(upstream[k]) if k in grads else None for k in upstream}
        b.launchers.gaussian_backward(g["sample"], g["mean"], g["std"], b.to(stats), b.to(noise),
                                      min_std, gs, gn, **codes)
        return {"sample": sample, "mean": mean, "std": std, "g_stats": gs, "g_noise": gn}

    o = run(backend, case)
    leaves = [up(t, dtype).requires_grad_() for t in (stats, noise)]
    refs_out = ops.gaussian_sample_ref(*leaves, min_std, std_act, mean_act, min_std_mode)
    refs = {k: v.detach() for k, v in zip(("sample", "mean", "std"), refs_out)}
    if R * S:
        outs = [v for k, v in zip(("sample", "mean", "std"), refs_out) if k in grads]
        ups = [up(upstream[k], dtype) for k in ("sample", "mean", "std") if k in grads]
        if outs:
            g_stats, g_noise = torch.autograd.grad(outs, leaves, ups, allow_unused=True)
        else:
            g_stats = g_noise = None
        refs["g_stats"] = g_stats if g_stats is not None else torch.zeros_like(leaves[0])
        refs["g_noise"] = g_noise if g_noise is not None else torch.zeros_like(leaves[1])
    check(o, refs, dtype)


def normal_action_ref(raw, noise, tanh_normal, min_std, std_range, std_offset, mean_scale):
    A = noise.shape[-1]
    rm, rs = raw[:, :A], raw[:, A:]
    if tanh_normal:
        mean = mean_scale * torch.tanh(rm / mean_scale)
        std = F.softplus(rs + std_offset) + min_std
        return torch.tanh(mean + std * noise)
    x = torch.tanh(rm) + (std_range * torch.sigmoid(rs + 2) + min_std) * noise
    return x + (x.clamp(-1, 1) - x).detach()  # the clip is straight-through


# (R, A, tanh_normal, min_std, std_range, std_offset, mean_scale)
ACTION_CASES = [(1, 1, True, 0.1, 0.9, 0.0, 1.0), (7, 6, True, 0.05, 0.9, 0.5, 2.0),
                (37, 9, False, 0.1, 0.9, 0.0, 1.0), (300, 1, False, 0.2, 0.7, 0.0, 1.0),
                (0, 3, True, 0.1, 0.9, 0.0, 1.0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R,A,tanh_normal,min_std,std_range,std_offset,mean_scale",
                         ACTION_CASES, ids=[f"R{c[0]}A{c[1]}{'tanh' if c[2] else 'bounded'}"
                                            for c in ACTION_CASES])
def test_normal_action(backend, dtype, R, A, tanh_normal, min_std, std_range, std_offset,
                       mean_scale):
    gen = make_generator("normal_action", R, A, tanh_normal, dtype)
    raw = stored(torch.randn(R, 2 * A, generator=gen, dtype=torch.float64) * 1.5, dtype)
    noise = stored(torch.randn(R, A, generator=gen, dtype=torch.float64), dtype)
    ga = stored(torch.randn(R, A, generator=gen, dtype=torch.float64), dtype)
    head = (tanh_normal, min_std, std_range, std_offset, mean_scale)

    def case(b):
        action = b.nan((R, A), dtype)
        b.launchers.normal_action_forward(b.to(raw), b.to(noise), *head, action)
        graw = b.nan((R, 2 * A), dtype)
        b.launchers.normal_action_backward(b.to(raw), b.to(noise), b.to(ga), *head, graw)
        return {"action": action, "g_raw": graw}

    o = run(backend, case)
    rr = up(raw, dtype).requires_grad_()
    action = normal_action_ref(rr, up(noise, dtype), *head)
    refs = {"action": action.detach()}
    if R * A:
        refs["g_raw"] = torch.autograd.grad(action, rr, up(ga, dtype))[0]
    check(o, refs, dtype)


CAT_CASES = [(1, 1), (5, 2), (9, 8), (3, 9), (17, 32), (9, 33), (5, 64), (9, 65), (3, 128),
             (4, 129), (9, 255), (3, 256), (2, 257), (2, 300), (0, 5)]


def sequential_index(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The kernels' index search on given probs: the number of k < K-1 whose running sum
    (added in order, in probs' dtype) u is not below."""
    R, K = probs.shape
    c = torch.zeros(R, dtype=probs.dtype)
    before = torch.zeros(R, dtype=torch.int64)
    for k in range(K - 1):
        c = c + probs[:, k]
        before += (~(u < c)).to(torch.int64)
    return before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("R,K", CAT_CASES, ids=[f"R{r}K{k}" for r, k in CAT_CASES])
def test_categorical_sample(backend, dtype, R, K):
    gen = make_generator("categorical", R, K, dtype)
    logits = stored(torch.randn(R, K, generator=gen, dtype=torch.float64) * 2, dtype)
    uniform = stored(torch.rand(R, generator=gen, dtype=torch.float64) * 0.999, dtype)
    g_sample = stored(torch.randn(R, K, generator=gen, dtype=torch.float64), dtype)
    g_probs = stored(torch.randn(R, K, generator=gen, dtype=torch.float64), dtype)
    unimix = 0.01 if K % 2 else 0.0
    grads = [("sample", "probs"), ("sample",), ("probs",)][K % 3]

    def case(b):
        probs, sample = b.nan((R, K), dtype), b.nan((R, K), dtype)
        if b.name == "emu":
            b.launchers.reset_counters()
        b.launchers.categorical_forward(b.to(logits), b.to(uniform), unimix, probs, sample)
        if b.name == "emu" and R:  # K > 8: the warp kernel (32-lane shuffles), else a thread
            c = b.launchers.counters()
            assert (c["max_exchange_lanes"] == 32) if K > 8 else (c["exchanges"] == 0)
        gl = b.nan((R, K), dtype)
        b.launchers.categorical_backward(b.to(g_sample) if "sample" in grads else None,
                                         b.to(g_probs) if "probs" in grads else None,
                                         b.to(logits), unimix, gl)
        return {"probs": probs, "sample": sample, "g_logits": gl}

    o = run(backend, case)
    lr = up(logits, dtype).requires_grad_()
    sample, probs = ops.categorical_sample_ref(lr, up(uniform, dtype), unimix)
    refs = {"probs": probs.detach(), "sample": sample.detach()}
    if R:
        outs = {"sample": sample, "probs": probs}
        refs["g_logits"] = torch.autograd.grad(
            [outs[k] for k in grads], lr, [up({"sample": g_sample, "probs": g_probs}[k], dtype)
                                           for k in grads])[0]
    check(o, refs, dtype)
    if R and dtype in (torch.float64, torch.float32):
        # probs are stored unrounded here: the sampled index is the sequential search on them
        assert torch.equal(o["sample"].argmax(-1),
                           sequential_index(o["probs"], uniform.to(dtype)))


# ======================================================================================
# the shared row functions with a multi-lane policy (4 and 32 lanes per row)
# ======================================================================================

LANES_CASES = [(1, 1), (5, 11), (9, 45), (21, 7)]


@pytest.mark.cuda_emu
@pytest.mark.parametrize("lanes", [4, 32])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, id="f64"),
                                   pytest.param(torch.float16, id="f16")])
@pytest.mark.parametrize("B,H", LANES_CASES, ids=[f"B{b}H{h}" for b, h in LANES_CASES])
def test_ln_gru_rows_multi_lane(lanes, dtype, B, H):
    emu = require_emu()
    parts, hx, gamma, beta, dh_out = ln_gru_inputs(B, H, dtype, "ln_gru_lanes")
    acc, eps, ub = acc_dtype(dtype), 1e-4, -1.0
    nan = lambda *s, dt=dtype: torch.full(s, float("nan"), dtype=dt)  # noqa: E731
    hy, stats = nan(B, H), nan(B, 2, dt=acc)
    emu.ln_gru_forward_lanes(lanes, parts, hx, gamma, beta, eps, ub, hy, stats)
    dy, dyx, dparts, dh = nan(B, 3 * H, dt=acc), nan(B, 3 * H, dt=acc), nan(B, 3 * H), nan(B, H)
    emu.ln_gru_backward_lanes(lanes, dh_out, parts, hx, gamma, beta, stats, ub, dy, dyx,
                              dparts, dh)
    leaves = [up(t, dtype).requires_grad_() for t in (parts, hx, gamma, beta)]
    hy_r, stats_r = ln_gru_ref(*leaves, eps, ub)
    dparts_r, dh_r, dgamma, dbeta = torch.autograd.grad(hy_r, leaves, up(dh_out, dtype))
    check({"hy": hy, "stats": stats, "dparts": dparts, "dh_direct": dh, "dy_sum": dy.sum(0),
           "dy_xhat_sum": dyx.sum(0)},
          {"hy": hy_r.detach(), "stats": stats_r.detach(), "dparts": dparts_r, "dh_direct": dh_r,
           "dy_sum": dbeta, "dy_xhat_sum": dgamma}, dtype,
          acc_names=("stats", "dy_sum", "dy_xhat_sum"))


@pytest.mark.cuda_emu
@pytest.mark.parametrize("lanes", [4, 32])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="f32"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm,affine,act", [(1, "wb", 1), (2, "w", 2), (0, "", 4)],
                         ids=["layer-silu", "rms-elu", "none-gelu"])
@pytest.mark.parametrize("B,N", LANES_CASES, ids=[f"B{b}N{n}" for b, n in LANES_CASES])
def test_norm_act_rows_multi_lane(lanes, dtype, norm, affine, act, B, N):
    emu = require_emu()
    gen = make_generator("dense_lanes", B, N, norm, lanes, dtype)
    f = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    z, dout = stored(f(B, N) * 2 + 0.3, dtype), stored(f(B, N), dtype)
    w = stored(1 + 0.3 * f(N), dtype) if "w" in affine else None
    b = stored(0.2 * f(N), dtype) if "b" in affine else None
    acc, eps = acc_dtype(dtype), 1e-3
    nan = lambda *s, dt=dtype: torch.full(s, float("nan"), dtype=dt)  # noqa: E731
    out, stats = nan(B, N), nan(B, 2, dt=acc)
    emu.norm_act_forward_lanes(lanes, z, w, b, norm, act, eps, out, stats)
    with_rows = norm != 0
    dy = nan(B, N, dt=acc) if with_rows else None
    dyx = nan(B, N, dt=acc) if with_rows else None
    dz = nan(B, N)
    emu.norm_act_backward_lanes(lanes, dout, z, w, b, stats, norm, act, dy, dyx, dz)
    zr = up(z, dtype).requires_grad_()
    out_r, stats_r, y, xhat = dense_epilogue_ref(zr, up(w, dtype), up(b, dtype), norm, act, eps)
    dz_r, dy_r = torch.autograd.grad(out_r, [zr, y], up(dout, dtype))
    got = {"out": out, "stats": stats, "dz": dz}
    refs = {"out": out_r.detach(), "stats": stats_r.detach(), "dz": dz_r}
    if with_rows:
        got.update(dy=dy, dy_xhat=dyx)
        refs.update(dy=dy_r, dy_xhat=dy_r * xhat.detach())
    check(got, refs, dtype, acc_names=("stats", "dy", "dy_xhat"),
          scales={"dz": norm_grad_scale(dz_r, dy_r, up(w, dtype), stats_r.detach())})


# ======================================================================================
# launch dispatch: index width, warp-kernel variants, grid limits, 64-bit index kernels
# ======================================================================================

@pytest.mark.cuda_emu
def test_heads_dispatch_decisions():
    emu = require_emu()
    # 32-bit indices while every index of the grid (total plus a block of overshoot) fits
    limit = 2**32 - 1 - 256
    assert [emu.heads_index_bits(t) for t in (1, limit, limit + 1, 2**40)] == [32, 32, 64, 64]
    expect = {1: 1, 32: 1, 33: 2, 64: 2, 65: 4, 128: 4, 129: 8, 255: 8, 256: 8, 257: 0, 4096: 0}
    assert {k: emu.heads_warp_chunks(k) for k in expect} == expect


@pytest.mark.cuda_emu
def test_heads_grid_limits_refused_before_any_access():
    emu = require_emu()
    # null pointers: a launcher that touched memory here would crash instead of refusing
    assert emu.gaussian_sample_forward_raw_error(2**40, 1) == emu.cudaErrorInvalidConfiguration
    assert emu.categorical_sample_forward_raw_error(2**40, 9) == emu.cudaErrorInvalidConfiguration
    assert emu.categorical_sample_forward_raw_error(4, 0) == emu.cudaErrorInvalidValue
    assert emu.categorical_sample_forward_raw_error(0, 9) == 0  # nothing to do: success


@pytest.mark.cuda_emu
@pytest.mark.parametrize("dtype", dtype_params())
def test_heads_index64_kernels_match(dtype):
    """The 64-bit index instantiations (chosen past 2^32 elements) give the 32-bit ones'
    results bit for bit."""
    emu = require_emu()
    gen = make_generator("index64", dtype)
    R, S = 37, 9
    r = lambda *s: stored(torch.randn(*s, generator=gen, dtype=torch.float64), dtype)  # noqa
    stats, noise, g = r(R, 2 * S), r(R, S), r(R, S)
    outs = {}
    for wide in (False, True):
        sm = [torch.full((R, S), float("nan"), dtype=dtype) for _ in range(3)]
        gs, gn = torch.full((R, 2 * S), float("nan"), dtype=dtype), torch.full(
            (R, S), float("nan"), dtype=dtype)
        act, graw = torch.full((R, S), float("nan"), dtype=dtype), torch.full(
            (R, 2 * S), float("nan"), dtype=dtype)
        sfx = "_index64" if wide else ""
        getattr(emu, "gaussian_forward" + sfx)(stats, noise, 0.1, *sm)
        getattr(emu, "gaussian_backward" + sfx)(g, g, g, stats, noise, 0.1, gs, gn)
        # and with activations and the clamp (codes: sigmoid2, tanh5, clamp)
        sm2 = [torch.full((R, S), float("nan"), dtype=dtype) for _ in range(3)]
        gs2 = torch.full((R, 2 * S), float("nan"), dtype=dtype)
        gn2 = torch.full((R, S), float("nan"), dtype=dtype)
        getattr(emu, "gaussian_forward" + sfx)(stats, noise, 0.6, *sm2, std_act=3, mean_act=1,
                                               min_std_mode=1)
        getattr(emu, "gaussian_backward" + sfx)(g, g, g, stats, noise, 0.6, gs2, gn2,
                                                std_act=3, mean_act=1, min_std_mode=1)
        getattr(emu, "normal_action_forward" + sfx)(stats, noise, True, 0.1, 0.9, 0.3, 2.0, act)
        getattr(emu, "normal_action_backward" + sfx)(stats, noise, g, False, 0.1, 0.9, 0.0, 1.0,
                                                     graw)
        outs[wide] = sm + [gs, gn, act, graw] + sm2 + [gs2, gn2]
    for a, b in zip(outs[False], outs[True]):
        assert not torch.isnan(a).any()
        assert torch.equal(a, b)


# ======================================================================================
# the emulation itself
# ======================================================================================

def _shfl_expected():
    x = [3 * t + 1 for t in range(64)]
    rows = []
    for t in range(64):
        lane, base = t % 32, t - t % 32

        def seg(w, src):  # own value outside the segment of width w
            s0 = lane - lane % w
            return x[base + src] if s0 <= src < s0 + w else x[t]
        rows.append([x[base + (lane ^ 5)], x[base + 7], seg(32, lane - 3), seg(32, lane + 2),
                     seg(4, lane ^ 1), x[base + lane - lane % 8 + 2], seg(16, lane + 1)])
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.cuda_emu
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_emulated_shuffles(mode):
    emu = require_emu()
    emu.set_schedule(mode, 7)
    out = torch.zeros(64 * 7, dtype=torch.int32)
    emu.selftest_shuffles(out)
    assert torch.equal(out.view(64, 7), _shfl_expected())


@pytest.mark.cuda_emu
@pytest.mark.parametrize("n", [1, 100, 1024])
def test_emulated_syncthreads_shared_memory(n):
    emu = require_emu()
    out = torch.zeros(n, dtype=torch.int32)
    emu.selftest_syncthreads(out)
    t = torch.arange(n)
    assert torch.equal(out, (((t + 37) % n) ** 2).to(torch.int32))


@pytest.mark.cuda_emu
def test_emulated_warp_handoff_needs_the_sync():
    """A lane reading another lane's store without __syncwarp (a race on a GPU) sees an
    order-dependent value in the emulation; with the sync every order gives the stores."""
    emu = require_emu()
    expected = ((torch.arange(32) + 1) % 32 + 1).to(torch.int32)
    results = {}
    for with_sync in (True, False):
        for mode in (0, 1, 2):
            emu.set_schedule(mode, 3)
            buf, out = torch.zeros(32, dtype=torch.int32), torch.zeros(32, dtype=torch.int32)
            emu.selftest_warp_handoff(buf, out, with_sync)
            results[with_sync, mode] = out
    for mode in (0, 1, 2):
        assert torch.equal(results[True, mode], expected)
    assert not all(torch.equal(results[False, m], expected) for m in (0, 1))


@pytest.mark.cuda_emu
@pytest.mark.parametrize("grid,block", [((2, 3, 1), (4, 2, 2)), ((5, 1, 2), (33, 1, 1))])
def test_emulated_coordinates(grid, block):
    emu = require_emu()
    nb, nt = grid[0] * grid[1] * grid[2], block[0] * block[1] * block[2]
    out = torch.full((nb * nt, 12), -1, dtype=torch.int64)
    emu.selftest_coords(out, list(grid), list(block))
    rows = []
    for bz, by, bx in itertools.product(range(grid[2]), range(grid[1]), range(grid[0])):
        for tz, ty, tx in itertools.product(range(block[2]), range(block[1]), range(block[0])):
            rows.append([tx, ty, tz, bx, by, bz, *block, *grid])
    assert torch.equal(out, torch.tensor(rows, dtype=torch.int64))


@pytest.mark.cuda_emu
@pytest.mark.parametrize("which,match", [
    (0, r"lane 16 of warp 0 exited while lane 0 waits for it at __shfl_xor_sync"),
    (1, r"cannot complete \(divergent lanes\)"),
    (2, r"names lane 16, but the warp has only 16 threads"),
    (3, r"width 3 is not a power of two"),
], ids=["exited-lanes", "divergent-call-sites", "partial-warp", "bad-width"])
def test_emulation_reports_undefined_exchanges(which, match):
    emu = require_emu()
    out = torch.zeros(48, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="CUDA kernel launch failed: emulated kernel failed"):
        try:
            emu.selftest_invalid(which, out)
        except RuntimeError as exc:
            assert re.search(match, str(exc)), str(exc)
            assert "csrc/emu/lanes_kernels.cpp:" in str(exc)  # names the call site
            raise
    # the failure is consumed: the next launch works
    emu.selftest_shuffles(torch.zeros(64 * 7, dtype=torch.int32))


@pytest.mark.cuda_emu
def test_emulation_partial_masks():
    """Groups of 4 lanes exchanging over their own masks while the odd groups have left."""
    emu = require_emu()
    out = torch.full((48,), -1, dtype=torch.int32)
    emu.selftest_invalid(4, out)
    for g in range(8):
        want = sum(range(4 * g, 4 * g + 4)) if g % 2 == 0 else -1
        assert out[4 * g:4 * g + 4].tolist() == [want] * 4


@pytest.mark.cuda_emu
@pytest.mark.parametrize("grid,threads,ok", [(1, 1024, True), (1, 1025, False),
                                             (0, 32, False), (3, 0, False)])
def test_emulated_launch_configuration(grid, threads, ok):
    emu = require_emu()
    if ok:
        emu.selftest_launch_config(grid, threads)
    else:
        with pytest.raises(RuntimeError, match="invalid configuration argument"):
            emu.selftest_launch_config(grid, threads)


@pytest.mark.cuda_emu
def test_every_launcher_and_kernel_file_is_emulated():
    """Each *_cuda launcher declared in csrc is bound (and run by a test above), and each
    kernel file is compiled into the emulation module by a csrc/emu wrapper."""
    emu = require_emu()
    declared = set()
    for header in CSRC.glob("*/*.h"):
        declared |= set(re.findall(r"void (\w+)_cuda\(", header.read_text()))
    assert len(declared) >= 18  # the 18 launchers of scan, cells, dense, heads
    missing = sorted(n for n in declared if not hasattr(emu, n))
    assert not missing, f"launchers without an emulated binding: {missing}"
    source = pathlib.Path(__file__).read_text()
    untested = sorted(n for n in declared if f"launchers.{n}(" not in source)
    assert not untested, f"launchers no test here calls: {untested}"
    wrappers = "".join(p.read_text() for p in (CSRC / "emu").glob("kernels_*.cpp"))
    for cu in CSRC.glob("*/*.cu"):
        rel = cu.relative_to(CSRC).as_posix()
        assert f'#include "{rel}"' in wrappers, f"{rel} is not compiled into _cuda_emu"


# ======================================================================================
# the tolerance rejects a kernel that accumulates in half precision
# ======================================================================================

def _half_sequential_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums added one column at a time, each addition rounded to x's dtype (what a
    kernel with a float16 accumulator computes)."""
    s = torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(x.shape[1]):
        s = s + x[:, k]
    return s


def _layer_norm_half_acc(z):
    n = z.shape[1]
    mean = (_half_sequential_sum(z) / n).unsqueeze(1)
    d = z - mean
    var = (_half_sequential_sum(d * d) / n).unsqueeze(1)
    return d * torch.rsqrt(var + 1e-3)


@pytest.mark.cuda_emu
def test_half_accumulation_is_rejected():
    """Row reduction (LayerNorm over 255 columns), recurrence (a 64-step scan) and the
    softmax normaliser (255 classes): run through the same ulp check, a float16
    accumulator fails it while the emulated kernels (float32 accumulators) pass."""
    emu = require_emu()
    h = torch.float16
    gen = make_generator("half_acc")
    # LayerNorm epilogue, no affine, no activation
    B, N = 9, 255
    z = (torch.randn(B, N, generator=gen, dtype=torch.float64) * 2 + 3).to(h)
    out, stats = torch.full((B, N), float("nan"), dtype=h), torch.empty(B, 2)
    emu.epilogue_forward(z, None, None, 1, 0, 1e-3, out, stats)
    ref = dense_epilogue_ref(z.float(), None, None, 1, 0, 1e-3)[0]
    assert_ulp_close(out, ref, h, "layer norm (float32 accumulation)")
    with pytest.raises(AssertionError, match="ulps of torch.float16"):
        assert_ulp_close(_layer_norm_half_acc(z), ref, h, "layer norm (float16 accumulation)")
    # reverse scan over 64 steps
    T, M = 64, 33
    x = torch.randn(T, M, generator=gen, dtype=torch.float64).to(h)
    d = (0.9 + 0.09 * torch.rand(T, M, generator=gen, dtype=torch.float64)).to(h)
    init = torch.zeros(M, dtype=h)
    out = torch.full((T, M), float("nan"), dtype=h)
    emu.reverse_scan_forward(x, d, init, out, T, M)
    ref = reverse_scan_ref(x.float(), d.float(), init.float())
    assert_ulp_close(out, ref, h, "scan (float32 carry)")
    with pytest.raises(AssertionError, match="ulps of torch.float16"):
        assert_ulp_close(reverse_scan_ref(x, d, init), ref, h, "scan (float16 carry)")
    # softmax over 255 classes
    R, K = 9, 255
    logits = torch.randn(R, K, generator=gen, dtype=torch.float64).to(h)
    u = torch.rand(R, generator=gen, dtype=torch.float64).to(h)
    probs, sample = torch.empty(R, K, dtype=h), torch.empty(R, K, dtype=h)
    emu.categorical_forward(logits, u, 0.0, probs, sample)
    ref = torch.softmax(logits.float(), -1)
    assert_ulp_close(probs, ref, h, "softmax (float32 normaliser)")
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)  # exp in float16
    with pytest.raises(AssertionError, match="ulps of torch.float16"):
        assert_ulp_close(e / _half_sequential_sum(e).unsqueeze(1), ref, h,
                         "softmax (float16 normaliser)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="f32"),
                                   pytest.param(torch.float16, id="f16")])
@pytest.mark.parametrize("K", [5, 40, 300], ids=["thread-row", "warp-row", "warp-reread"])
def test_categorical_special_values(backend, dtype, K):
    """A NaN logit makes its row NaN; -inf logits get only the unimix floor; large logits
    do not overflow (the row max is taken first); a uniform just below 1 takes the last
    class — in every categorical kernel."""
    gen = make_generator("categorical_special", K, dtype)
    R = 11  # rows of two blocks of the warp kernel (8 per block)
    logits = torch.randn(R, K, generator=gen, dtype=torch.float64)
    logits[0, K // 2] = float("nan")
    logits[1, : K // 2] = float("-inf")
    logits[2] *= 30
    logits = stored(logits, dtype)
    uniform = stored(torch.rand(R, generator=gen, dtype=torch.float64) * 0.999, dtype)
    one = torch.ones((), dtype=dtype)
    uniform[3] = torch.nextafter(one, torch.zeros_like(one))  # past every searched sum
    g = stored(torch.randn(R, K, generator=gen, dtype=torch.float64), dtype)

    def case(b):
        probs, sample, gl = (b.nan((R, K), dtype) for _ in range(3))
        b.launchers.categorical_forward(b.to(logits), b.to(uniform), 0.01, probs, sample)
        b.launchers.categorical_backward(b.to(g), None, b.to(logits), 0.01, gl)
        return {"probs": probs, "sample": sample, "g_logits": gl}

    o = run(backend, case)
    lr = up(logits, dtype).requires_grad_()
    sample, probs = ops.categorical_sample_ref(lr, up(uniform, dtype), 0.01)
    (gl,) = torch.autograd.grad(sample, lr, up(g, dtype))
    assert torch.isnan(o["probs"][0]).all()
    assert o["sample"][3].argmax().item() == K - 1
    check(o, {"probs": probs.detach(), "sample": sample.detach(), "g_logits": gl}, dtype)
