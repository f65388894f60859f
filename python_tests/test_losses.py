"""The learning objectives of :mod:`dreamer_fast.agents.losses` on hand-built inputs, and
the first updates of each algorithm against values recorded from the trainer.

``test_first_updates_match_the_recorded_values``: three updates of a tiny agent per
algorithm, action space and backend, from a fixed seed and fixed batches; the recorded
values are those of the trainer before its losses moved to free functions (the move left
them bit for bit the same). The tolerance only allows for another CPU's float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamer_fast.agents import losses
from dreamer_fast.agents.agent import Agent
from dreamer_fast.agents.behavior import ActorCritic
from dreamer_fast.agents.config import load_config
from dreamer_fast.agents.dists import TwoHot, symlog

TINY = {"model.deter": 32, "model.hidden": 32, "model.stoch": 4, "model.classes": 4,
        "model.units": 32, "model.blocks": 4, "run.batch_size": 4, "run.batch_length": 8,
        "behavior.horizon": 5}

KEYS = ("wm/loss", "wm/dec", "wm/reward", "wm/cont", "wm/kl", "wm/grad_norm", "actor/loss",
        "actor/entropy", "actor/grad_norm", "critic/loss", "critic/grad_norm",
        "imag/return", "imag/reward", "imag/return_scale", "imag/value")

#: The order of an update's metrics (and so of the keys of a metrics.jsonl record).
LOGGED_ORDER = ["wm/loss", "wm/dec", "wm/reward", "wm/cont", "wm/kl", "wm/grad_norm",
                "actor/loss", "actor/entropy", "critic/loss", "imag/return", "imag/reward",
                "imag/return_scale", "imag/value", "actor/grad_norm", "critic/grad_norm",
                "train/update_s"]

#: (algo, discrete, backend) -> per update, the metrics of KEYS in that order.
RECORDED = {
    ('v1', False, 'ref'): [
        (7.406551361083984, 3.1297624111175537, 0.517480731010437, 0.7593079805374146,
         0.12048286944627762, 2.452902317047119, 0.11903396993875504, -4.179365634918213,
         0.0004923912929370999, 0.02126258611679077, 0.17058496177196503,
         -0.2787463366985321, -0.18724754452705383, 1.0, 0.007293084170669317),
        (6.728204250335693, 2.642488479614258, 0.33316460251808167, 0.7525513172149658,
         0.09237796068191528, 1.8037714958190918, 0.09858240187168121, -4.0436835289001465,
         0.00036889611510559916, 0.015733283013105392, 0.14557680487632751,
         -0.24258367717266083, -0.16040058434009552, 1.0, 0.0143399303779006),
        (6.903441905975342, 2.760111093521118, 0.401000440120697, 0.7423303723335266,
         0.09401234984397888, 1.0649425983428955, 0.10788700729608536, -3.3428866863250732,
         0.0006051062955521047, 0.017587849870324135, 0.15331101417541504,
         -0.2544301450252533, -0.16779538989067078, 1.0, 0.00928939413279295),
    ],
    ('v1', False, 'fused'): [
        (7.406551361083984, 3.1297624111175537, 0.517480731010437, 0.7593079805374146,
         0.12048285454511642, 2.452902317047119, 0.11903396993875504, -4.179365634918213,
         0.000492391234729439, 0.02126258984208107, 0.17058496177196503,
         -0.2787463366985321, -0.18724752962589264, 1.0, 0.007293086498975754),
        (6.728204250335693, 2.642488479614258, 0.33316460251808167, 0.7525513172149658,
         0.09237798303365707, 1.8037714958190918, 0.09858240187168121, -4.0436835289001465,
         0.00036889611510559916, 0.015733283013105392, 0.14557680487632751,
         -0.24258367717266083, -0.16040058434009552, 1.0, 0.014339931309223175),
        (6.903441905975342, 2.760111093521118, 0.401000440120697, 0.7423303723335266,
         0.09401236474514008, 1.064942717552185, 0.10788700729608536, -3.3428866863250732,
         0.000605106120929122, 0.017587849870324135, 0.15331101417541504,
         -0.25443020462989807, -0.16779538989067078, 1.0, 0.009289395995438099),
    ],
    ('v2', False, 'ref'): [
        (6.153358459472656, 3.9386448860168457, 0.533134400844574, 0.6792321801185608,
         0.506356954574585, 11.012429237365723, 0.13741213083267212, -4.167869567871094,
         0.011504811234772205, 0.06222052499651909, 0.5812865495681763,
         -0.35213854908943176, -0.1911538988351822, 1.0, -0.11185339838266373),
        (5.532312870025635, 3.565472364425659, 0.32659196853637695, 0.6402488350868225,
         0.4167628586292267, 12.8418607711792, 0.18622972071170807, -4.039910793304443,
         0.012743104249238968, 0.06693889945745468, 0.7765145301818848, -0.443869411945343,
         -0.2544682025909424, 1.0, -0.11660552024841309),
        (5.646859645843506, 3.478297472000122, 0.5312504172325134, 0.6373121738433838,
         0.4471433162689209, 8.965201377868652, 0.11155407130718231, -3.1739659309387207,
         0.031153367832303047, 0.050318289548158646, 0.33296939730644226,
         -0.28969335556030273, -0.14507263898849487, 1.0, -0.2249559611082077),
    ],
    ('v2', False, 'fused'): [
        (6.153358459472656, 3.938645124435425, 0.5331344604492188, 0.6792322397232056,
         0.506356954574585, 11.012430191040039, 0.13741213083267212, -4.167869567871094,
         0.011504816822707653, 0.06222051382064819, 0.5812864899635315,
         -0.35213854908943176, -0.1911538690328598, 1.0, -0.11185339093208313),
        (5.532312870025635, 3.56547212600708, 0.3265919089317322, 0.6402488350868225,
         0.4167628884315491, 12.841861724853516, 0.1862296760082245, -4.039910793304443,
         0.012743099592626095, 0.06693889200687408, 0.77651447057724, -0.443869411945343,
         -0.2544681429862976, 1.0, -0.11660554260015488),
        (5.646859645843506, 3.478296995162964, 0.5312503576278687, 0.6373121738433838,
         0.4471433758735657, 8.965200424194336, 0.11155406385660172, -3.1739659309387207,
         0.031153369694948196, 0.050318289548158646, 0.33296939730644226,
         -0.28969332575798035, -0.14507262408733368, 1.0, -0.2249559611082077),
    ],
    ('v2', True, 'ref'): [
        (5.923105716705322, 3.50258207321167, 0.8160390257835388, 0.604484498500824,
         0.5242889523506165, 10.39307975769043, 0.15800003707408905, 0.6563122868537903,
         0.20201364159584045, 0.2198491394519806, 1.3767976760864258, 0.6939963102340698,
         0.3486578166484833, 1.0, 0.1295083910226822),
        (5.623608112335205, 3.2259926795959473, 0.7655296921730042, 0.632085919380188,
         0.47183042764663696, 10.497108459472656, 0.13315026462078094, 0.6501724123954773,
         0.2688531279563904, 0.20220449566841125, 0.997913658618927, 0.5069131851196289,
         0.2924027144908905, 1.0, 0.05772802233695984),
        (5.599431037902832, 3.465960741043091, 0.5317724943161011, 0.5982190370559692,
         0.509456992149353, 11.18557357788086, 0.20967721939086914, 0.6573525667190552,
         0.18681249022483826, 0.1999322474002838, 1.3053033351898193, 0.7017515897750854,
         0.35451993346214294, 1.0, 0.15336935222148895),
    ],
    ('v2', True, 'fused'): [
        (5.923105716705322, 3.50258207321167, 0.8160390257835388, 0.604484498500824,
         0.5242889523506165, 10.39307975769043, 0.15800002217292786, 0.6563122868537903,
         0.20201364159584045, 0.2198491096496582, 1.3767976760864258, 0.6939963698387146,
         0.3486578166484833, 1.0, 0.12950842082500458),
        (5.623607635498047, 3.2259926795959473, 0.7655296921730042, 0.632085919380188,
         0.47183048725128174, 10.49710750579834, 0.13315023481845856, 0.6501724123954773,
         0.2688531279563904, 0.20220446586608887, 0.9979135394096375, 0.5069131255149841,
         0.2924027144908905, 1.0, 0.05772804096341133),
        (5.599431037902832, 3.465960741043091, 0.5317724943161011, 0.598219096660614,
         0.5094569325447083, 11.18557357788086, 0.20967724919319153, 0.6573525667190552,
         0.18681247532367706, 0.1999322921037674, 1.3053033351898193, 0.701751708984375,
         0.35451996326446533, 1.0, 0.15336935222148895),
    ],
    ('v3', False, 'ref'): [
        (8.402493476867676, 1.565477728843689, 5.541263580322266, 0.6957520246505737, 1.0,
         6.773981094360352, -0.0001980450178962201, 1.3218902349472046,
         5.7430028391536325e-05, 4.338554859161377, 2.010053873062134,
         -7.322129386011511e-05, -4.6727407607249916e-05, 1.0, -1.154840063577467e-07),
        (7.9490861892700195, 1.1091880798339844, 5.536425590515137, 0.7034728527069092, 1.0,
         5.6309590339660645, -0.00022829142108093947, 1.328686237335205,
         5.47698546142783e-05, 4.228923797607422, 1.880932331085205, -0.0001295617694268003,
         -8.395285112783313e-05, 1.0, -6.208817904251873e-09),
        (8.287257194519043, 1.446958065032959, 5.5320820808410645, 0.7082171440124512, 1.0,
         6.791296005249023, -0.00024801952531561255, 1.327059030532837,
         6.246979319257662e-05, 4.33743953704834, 1.968626618385315, -0.0001523696701042354,
         -9.863862214842811e-05, 1.0, -7.664008982999349e-09),
    ],
    ('v3', False, 'fused'): [
        (8.402493476867676, 1.565477728843689, 5.541263580322266, 0.6957520246505737, 1.0,
         6.773981094360352, -0.0001980450178962201, 1.3218902349472046,
         5.743003202951513e-05, 4.338554859161377, 2.010054111480713,
         -7.322129386011511e-05, -4.6727407607249916e-05, 1.0, -1.154840063577467e-07),
        (7.9490861892700195, 1.1091880798339844, 5.536425590515137, 0.7034728527069092, 1.0,
         5.630959510803223, -0.00022829460795037448, 1.328686237335205,
         5.477224840433337e-05, 4.228923797607422, 1.880932331085205,
         -0.00012956353020854294, -8.39542699395679e-05, 1.0, -5.471520569955146e-09),
        (8.287257194519043, 1.446958065032959, 5.5320820808410645, 0.7082171440124512, 1.0,
         6.791296482086182, -0.0002480184775777161, 1.327059030532837,
         6.246904376894236e-05, 4.33743953704834, 1.968626618385315,
         -0.00015236882609315217, -9.863778541330248e-05, 1.0, -7.664008982999349e-09),
    ],
    ('v3', True, 'ref'): [
        (8.119504928588867, 1.2720357179641724, 5.541263580322266, 0.7062057852745056, 1.0,
         5.850016117095947, -9.954815322998911e-05, 0.6813974976539612,
         1.726819755276665e-05, 4.358719825744629, 1.8985440731048584,
         -6.146392115624622e-05, -3.9211234252434224e-05, 1.0, -1.154840063577467e-07),
        (8.208784103393555, 1.425134539604187, 5.535977840423584, 0.647672176361084, 1.0,
         8.977104187011719, -0.00011236481077503413, 0.6766370534896851,
         3.817523247562349e-05, 4.554266452789307, 2.056452751159668,
         -9.584527288097888e-05, -5.9497793699847534e-05, 1.0, 8.343097879226491e-10),
        (8.070860862731934, 1.300612211227417, 5.531188011169434, 0.6390613317489624, 1.0,
         5.3236541748046875, -0.00012402556603774428, 0.6765193343162537,
         4.2149709770455956e-05, 4.732230186462402, 2.074657440185547,
         -0.00011205036571482196, -6.83119724271819e-05, 1.0, -7.198347251602399e-09),
    ],
    ('v3', True, 'fused'): [
        (8.119504928588867, 1.272035837173462, 5.541263580322266, 0.7062057852745056, 1.0,
         5.850015640258789, -9.954792767530307e-05, 0.6813974976539612,
         1.7267680959776044e-05, 4.358719348907471, 1.8985440731048584,
         -6.146261148387566e-05, -3.921056122635491e-05, 1.0, -1.154840063577467e-07),
        (8.208784103393555, 1.425134539604187, 5.535977840423584, 0.647672176361084, 1.0,
         8.977105140686035, -0.00011236481077503413, 0.6766370534896851,
         3.817523247562349e-05, 4.554266452789307, 2.056452512741089,
         -9.584527288097888e-05, -5.9497793699847534e-05, 1.0, 8.343097879226491e-10),
        (8.070860862731934, 1.300611972808838, 5.531188011169434, 0.6390613317489624, 1.0,
         5.323653697967529, -0.00012402512948028743, 0.6765192747116089,
         4.2149848013650626e-05, 4.732230186462402, 2.074657440185547,
         -0.0001120497690862976, -6.831141217844561e-05, 1.0, -7.87743648089645e-09),
    ],
}


def _batch(agent: Agent, seed: int) -> dict[str, np.ndarray]:
    B, T, A = agent.cfg.run.batch_size, agent.cfg.run.batch_length, agent.action_size
    rng = np.random.default_rng(seed)
    action = (np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))] if agent.discrete
              else rng.uniform(-1, 1, (B, T, A)).astype(np.float32))
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[1, 4] = True
    term = np.zeros((B, T), bool)
    term[2, 5] = True
    return {"vector": rng.normal(size=(B, T, 3)).astype(np.float32), "action": action,
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": is_first,
            "is_last": term.copy(), "is_terminal": term}


@pytest.mark.parametrize("case", list(RECORDED), ids=lambda c: f"{c[0]}-"
                         f"{'discrete' if c[1] else 'continuous'}-{c[2]}")
def test_first_updates_match_the_recorded_values(case):
    algo, discrete, backend = case
    over = dict(TINY, backend=backend)
    if algo == "v1":
        # the values were recorded with V1's paper settings; pinning them keeps this a test
        # of the arithmetic, not of the debug size's tuned defaults (which may change)
        over.update({"model.classes": 0, "model.kl_free": 3.0, "model.norm": "none",
                     "behavior.min_std": 1.0e-4,
                     "model.lr": 6.0e-4, "behavior.actor_lr": 8.0e-5, "behavior.critic_lr": 8.0e-5})
    cfg = load_config(algo, "debug", over)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        agent = Agent(cfg, "vector", (3,), 2 if discrete else 1, discrete,
                      torch.device("cpu"))
        torch.manual_seed(1)
        got = [agent.update(_batch(agent, i)) for i in range(3)]
    finally:
        torch.set_num_threads(threads)
    for i, (metrics, want) in enumerate(zip(got, RECORDED[case])):
        assert list(metrics) == LOGGED_ORDER
        for key, value in zip(KEYS, want):
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (i, key)


# ---- world model -------------------------------------------------------------------------


def _wm_preds(B=2, T=3, D=2):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {"dec": r(B, T, D), "reward": r(B, T, 1), "cont": r(B, T),
            "kl_dyn": torch.tensor([[0.5, 2.0, 4.0], [1.0, 0.1, 3.0]]),
            "kl_rep": torch.tensor([[3.0, 0.2, 1.5], [5.0, 2.5, 0.0]])}, {
        "vector": r(B, T, D), "reward": r(B, T),
        "is_terminal": torch.tensor([[False, False, True], [False, False, False]])}


def test_world_model_loss_balance_form_by_hand():
    cfg = load_config("v2", "debug", {"model.kl_free": 1.0, "model.kl_balance": 0.8,
                                      "model.reward_scale": 2.0, "model.kl_scale": 0.5})
    assert cfg.model.kl == "balance" and cfg.model.decoder == "mse"
    preds, data = _wm_preds()
    loss, metrics = losses.world_model_loss(preds, data, cfg, "vector")
    dec = ((preds["dec"] - data["vector"]) ** 2).sum(-1)
    rew = 0.5 * (preds["reward"][..., 0] - data["reward"]) ** 2
    p = torch.sigmoid(preds["cont"])
    y = 1.0 - data["is_terminal"].float()
    cont = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    kl = 0.8 * preds["kl_dyn"].clamp(min=1) + 0.2 * preds["kl_rep"].clamp(min=1)
    want = (dec + 2.0 * rew + cont + 0.5 * kl).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(metrics["wm/kl"], preds["kl_dyn"].mean())  # before free nats
    torch.testing.assert_close(metrics["wm/cont"], cont.mean())


def test_world_model_loss_free_bits_symlog_twohot_by_hand():
    cfg = load_config("v3", "debug", {"model.kl_free": 1.0})
    m = cfg.model
    preds, data = _wm_preds()
    preds["reward"] = torch.randn(2, 3, m.bins)
    loss, metrics = losses.world_model_loss(preds, data, cfg, "vector")
    dec = ((preds["dec"] - symlog(data["vector"])) ** 2).sum(-1)
    rew = TwoHot(m.bins).loss(preds["reward"], data["reward"])
    y = 1.0 - data["is_terminal"].float()
    cont = torch.nn.functional.binary_cross_entropy_with_logits(preds["cont"], y,
                                                                reduction="none")
    dyn, rep = preds["kl_dyn"].clamp(min=1), preds["kl_rep"].clamp(min=1)
    want = (dec + rew + cont + m.kl_dyn * dyn + m.kl_rep * rep).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(metrics["wm/kl"], dyn.mean())  # after the free bits


# ---- behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["ref", "auto"])
def test_lambda_return_of_a_hand_built_trajectory(backend):
    """H = 2: R_1 = r_2 + γ c_2 v_2 (R_2 = v_2), R_0 = r_1 + γ c_1 ((1 − λ) v_1 + λ R_1)."""
    cfg = load_config("v3", "debug", {**TINY, "behavior.discount": 0.9,
                                      "behavior.lambda_": 0.5})
    ac = ActorCritic(cfg, feat_size=4, action_size=1, discrete=False, backend=backend)
    reward = torch.tensor([[1.0, 2.0]])        # r_1, r_2
    cont = torch.tensor([[1.0, 0.5]])          # c_1, c_2
    value = torch.tensor([[0.5, 3.0, 4.0]])    # v_0, v_1, v_2
    r1 = 2.0 + 0.9 * 0.5 * 4.0
    r0 = 1.0 + 0.9 * 1.0 * (0.5 * 3.0 + 0.5 * r1)
    torch.testing.assert_close(ac.lambda_return(reward, cont, value),
                               torch.tensor([[r0, r1]]))


def test_trajectory_weight_stops_credit_after_a_predicted_end():
    w = losses.trajectory_weight(torch.tensor([[0.5, 0.2, 1.0], [1.0, 0.0, 1.0]]))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 0.1], [1.0, 1.0, 0.0]]))


class _Policy:
    """A stand-in action distribution: log π(a) = −(a − μ)²/2, constant entropy."""

    def __init__(self, mean: torch.Tensor, entropy: float) -> None:
        self.mean, self.ent = mean, entropy

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((a - self.mean) ** 2).sum(-1)

    def entropy(self) -> torch.Tensor:
        return torch.full(self.mean.shape[:-1], self.ent)


def test_actor_loss_reinforce_and_dynamics_by_hand():
    mean = torch.tensor([[[0.0], [1.0]]], requires_grad=True)
    taken = torch.tensor([[[1.0], [1.0]]])
    ret = torch.tensor([[3.0, 1.0]], requires_grad=True)
    value = torch.tensor([[1.0, 2.0]], requires_grad=True)
    weight, scale = torch.tensor([[1.0, 0.5]]), torch.tensor(2.0)
    loss, metrics = losses.actor_loss(_Policy(mean, 0.7), taken, ret, value, weight, scale,
                                      grad="reinforce", entropy=0.1)
    adv = torch.tensor([[1.0, -0.5]])
    logp = torch.tensor([[-0.5, 0.0]])
    torch.testing.assert_close(loss, (weight * (-logp * adv - 0.1 * 0.7)).mean())
    torch.testing.assert_close(metrics["actor/entropy"], torch.tensor(0.7))
    loss.backward()
    assert ret.grad is None and value.grad is None  # the advantage is a constant
    torch.testing.assert_close(mean.grad, torch.tensor([[[-0.5], [0.0]]]))

    loss, _ = losses.actor_loss(_Policy(mean, 0.7), None, ret, value, weight, scale,
                                grad="dynamics", entropy=0.1)
    torch.testing.assert_close(loss, (weight * (-ret / 2.0 - 0.07)).mean())
    loss.backward()
    torch.testing.assert_close(ret.grad, -weight / 2.0 / 2)


def test_critic_loss_mse_and_twohot_with_slow_regulariser():
    out = torch.tensor([[[1.0], [2.0]]], requires_grad=True)
    ret = torch.tensor([[3.0, 2.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.5]])
    loss, metrics = losses.critic_loss(out, ret, weight, twohot=None)
    torch.testing.assert_close(loss, torch.tensor((0.5 * 4.0 + 0.0) / 2))
    loss.backward()
    assert ret.grad is None  # the target is a constant

    # symlog_mse: the output is regressed on symlog(R) = sign(R)·log(1 + |R|)
    big = torch.tensor([[-1000.0, 3.0]])
    loss, _ = losses.critic_loss(out, big, weight, twohot=None, symlog_target=True)
    want = (1.0 * 0.5 * (1.0 + math.log(1001.0)) ** 2
            + 0.5 * 0.5 * (2.0 - math.log(4.0)) ** 2) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6)

    twohot = TwoHot(7, -2.0, 2.0)
    logits = torch.randn(1, 2, 7, generator=torch.Generator().manual_seed(0))
    slow = torch.tensor([[0.5, -1.0]])
    loss, _ = losses.critic_loss(logits, ret, weight, twohot=twohot, slow=slow,
                                 slow_reg=0.3)
    want = (weight * (twohot.loss(logits, ret) + 0.3 * twohot.loss(logits, slow))).mean()
    torch.testing.assert_close(loss, want)
