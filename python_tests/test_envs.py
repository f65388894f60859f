"""Environments: the dict-observation interface, action mapping, action repeat, flags,
dm_control proprio and pixels, vector envs, and errors for bad ids."""

from __future__ import annotations

import numpy as np
import pytest

# The environment and trainer tests need gymnasium (a dependency of the package, always
# installed by the README's set-up); the GPU check installs the extension alone
# (benchmarks/gpu_check.sh) and skips these modules instead of failing to collect.
gym = pytest.importorskip("gymnasium")

from dreamer_fast.envs import EnvError, make_env, make_vector_env  # noqa: E402
from dreamer_fast.envs.base import resize_image  # noqa: E402


def test_pendulum_interface_and_action_mapping():
    env = make_env("gym:Pendulum-v1", seed=0)
    assert not env.act_spec.discrete and env.act_spec.size == 1
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"vector"} and obs["vector"].shape == (3,)
    assert obs["vector"].dtype == np.float32
    # [-1, 1] maps onto Pendulum's [-2, 2] torque: +1 and a raw +2 give the same next state
    raw = gym.make("Pendulum-v1")
    raw.reset(seed=0)
    raw_obs, raw_r, *_ = raw.step(np.array([2.0], np.float32))
    obs, r, term, trunc, _ = env.step(np.array([1.0], np.float32))
    np.testing.assert_allclose(obs["vector"], raw_obs, rtol=1e-6)
    assert r == pytest.approx(raw_r) and not term and not trunc


def test_action_repeat_sums_rewards_and_time_limit_truncates():
    env = make_env("gym:Pendulum-v1", action_repeat=3, time_limit=9, seed=1)
    raw = gym.make("Pendulum-v1")
    env.reset(seed=1)
    raw.reset(seed=1)
    a = np.array([0.5], np.float32)
    total = sum(raw.step(np.array([1.0], np.float32))[1] for _ in range(3))
    _, r, *_ = env.step(a)
    assert r == pytest.approx(total, rel=1e-6)
    _, _, _, trunc2, _ = env.step(a)
    _, _, term, trunc3, _ = env.step(a)
    assert not trunc2 and trunc3 and not term  # 9 env steps = 3 agent steps


def test_cartpole_discrete_one_hot_and_terminal():
    env = make_env("gym:CartPole-v1", seed=0)
    assert env.act_spec.discrete and env.act_spec.size == 2
    env.reset(seed=0)
    for t in range(500):
        _, r, term, trunc, _ = env.step(np.array([0.0, 1.0], np.float32))  # always push right
        if term or trunc:
            break
    assert term and not trunc and t < 100  # falls over: a true terminal, not a time limit


def test_dmc_proprio():
    env = make_env("dmc:cartpole-swingup", action_repeat=2, time_limit=10, seed=0)
    assert env.act_spec.size == 1 and not env.act_spec.discrete
    obs, _ = env.reset()
    assert obs["vector"].shape == (5,) and obs["vector"].dtype == np.float32
    done, steps = False, 0
    while not done:
        obs, r, term, trunc, _ = env.step(np.array([1.0], np.float32))
        steps += 1
        done = term or trunc
        assert 0.0 <= r <= 2.0  # two env steps of a [0, 1] reward
    assert steps == 5 and trunc and not term


def test_dmc_pixels_64():
    env = make_env("dmc:cartpole-swingup", obs="pixels", seed=0)
    obs, _ = env.reset()
    assert set(obs) == {"image"}
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    obs2, *_ = env.step(np.array([1.0], np.float32))
    assert obs["image"].std() > 1  # rendered something
    assert env.observation_space.contains(obs2)


def test_gym_pixels_are_resized():
    env = make_env("gym:Pendulum-v1", obs="pixels", image_size=32, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8


def test_resize_image_area_average():
    img = np.zeros((128, 128, 3), np.uint8)
    img[:64] = 200
    out = resize_image(img, 64)
    assert out.shape == (64, 64, 3)
    assert (out[:32] == 200).all() and (out[32:] == 0).all()


@pytest.mark.parametrize("spec, needle", [
    ("Pendulum-v1", "must be '<suite>:<name>'"),
    ("atari:Pong", "unknown suite 'atari'"),
    ("gym:NoSuchEnv-v0", "gym:NoSuchEnv-v0"),
    ("dmc:cartpole", "dmc:<domain>-<task>"),
    ("dmc:cartpole-fly", "unknown dm_control task"),
])
def test_bad_env_ids(spec, needle):
    with pytest.raises(EnvError) as e:
        make_env(spec)
    assert needle in str(e.value)


def test_vector_env_subprocesses_autoreset_next_step():
    venv = make_vector_env("gym:Pendulum-v1", 2, seed=0, action_repeat=1, time_limit=3)
    try:
        obs, _ = venv.reset(seed=0)
        assert obs["vector"].shape == (2, 3)
        a = np.zeros((2, 1), np.float32)
        dones = []
        for _ in range(4):
            obs, r, term, trunc, _ = venv.step(a)
            dones.append(bool(trunc[0]))
        # three steps, truncation, then the reset step (reward 0, not done)
        assert dones == [False, False, True, False]
        assert r[0] == 0.0
    finally:
        venv.close()


def test_gym_reset_after_an_explicitly_seeded_one_starts_a_new_episode():
    from dreamer_fast.envs.gym_env import GymEnv
    env = GymEnv("Pendulum-v1", seed=0)
    first, _ = env.reset(seed=0)
    second, _ = env.reset()  # an autoreset: not the construction seed again
    assert not np.array_equal(first["vector"], second["vector"])
    env.close()
