"""Sampling and the gradient estimator: plain Python, no Ray.

An agent steps ``num_envs`` environments at once with batched inference, then estimates the policy
gradient with GAE(lambda) advantages from a private critic (or a batch-mean baseline). What leaves
the agent is the policy gradient and the increments of the shared statistics (observation normaliser,
reward scale), which the server merges; the critic stays private.

Per-step inference and the critic's fit run on :class:`NumpyMLP`, a float32 numpy mirror of
``policy.mlp``: at 4-64 rows torch's fixed cost per call (about 0.3 ms a forward pass, 1 ms an Adam
step) is many times the arithmetic, and it cost an agent over half its time on Hopper
(benchmarks/sampling.py). The policy gradient itself, one batched pass, stays in torch autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from afedpg_ray.config import EstimatorConfig
from afedpg_ray.mujoco_warnings import route_mujoco_warnings
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.policy import Policy, build_policy, flat_grad, mlp, set_flat

OBS_CLIP = 10.0
"""Normalised observations are clipped to [-OBS_CLIP, OBS_CLIP] (``RunningStats.normalize``'s default)."""


def gae(
    rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, dones: np.ndarray, gamma: float, lam: float
) -> np.ndarray:
    """GAE(lambda) advantages for arrays of shape (T, n_envs).

    ``next_values[t]`` is V(s_{t+1}) (zero where the episode terminated; the value of the final
    observation where it was truncated); ``dones[t]`` cuts the recursion at episode ends.
    """
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages


class ReturnScaler:
    """Divides rewards by the running std of the discounted return (as SB3's VecNormalize does).

    The statistics are shared like the observation normaliser: ``shared`` is what the server merged
    from every agent, and this agent adds the returns it saw since its last report (``take_delta``).
    A restarted agent therefore scales rewards as the others do at once; measured here, a fresh
    private scaler collapsed a CartPole run that had reached 230 back to ~100 after a restart.
    Steps are merged with Chan et al.'s formula on plain floats: this runs every environment step.
    """

    def __init__(self, num_envs: int, gamma: float) -> None:
        self.gamma = gamma
        self.returns = np.zeros(num_envs)
        self.shared = RunningStats.empty(1)
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    @property
    def var(self) -> float:
        """Variance of the shared returns merged with this agent's new ones (1 before two are seen)."""
        shared_count = self.shared.count
        total = shared_count + self.count
        if total < 2:
            return 1.0
        if shared_count == 0:
            return self.m2 / total
        delta = self.mean - float(self.shared.mean[0])
        m2 = float(self.shared.m2[0]) + self.m2 + delta**2 * shared_count * self.count / total
        return m2 / total

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scaled rewards; adds this step's discounted returns to the agent's new statistics."""
        returns = self.returns
        returns *= self.gamma
        returns += rewards
        n = float(len(returns))
        batch_mean = float(returns.sum()) / n
        deviation = returns - batch_mean
        batch_m2 = float(deviation @ deviation)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        returns[dones] = 0.0
        return rewards / math.sqrt(self.var + 1e-8)

    def take_delta(self) -> RunningStats:
        """The returns seen since the last call, for the server to merge; starts a new delta."""
        delta = RunningStats(self.count, np.array([self.mean]), np.array([self.m2]))
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0
        return delta


@dataclass(frozen=True)
class GradientEstimate:
    """An agent's gradient (ascent direction) with what it learned about the environment."""

    grad: np.ndarray
    samples: int
    episode_returns: tuple[float, ...]
    episode_lengths: tuple[int, ...]
    obs_delta: RunningStats
    return_delta: RunningStats


class NumpyMLP:
    """A tanh MLP (as built by ``policy.mlp``) in float32 numpy: forward pass and backpropagation.

    All parameters live in one flat vector (``flat``); ``params`` are its per-layer views, weight
    (in, out) then bias, so an optimiser updates every layer with a handful of vector operations.
    """

    def __init__(self, net: nn.Sequential) -> None:
        self.shapes: list[tuple[int, ...]] = []
        for lin in (m for m in net if isinstance(m, nn.Linear)):
            self.shapes += [(lin.in_features, lin.out_features), (lin.out_features,)]
        ends = np.cumsum([math.prod(shape) for shape in self.shapes]).tolist()
        self.slices = [slice(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        self.flat = np.zeros(ends[-1], dtype=np.float32)
        self.params = self.views(self.flat)
        self.load(net)

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """``flat`` cut into arrays of the parameters' shapes (views, not copies)."""
        return [flat[part].reshape(shape) for part, shape in zip(self.slices, self.shapes, strict=True)]

    def load(self, net: nn.Sequential) -> None:
        """Copy the weights of ``net`` (same architecture; a ``Linear`` stores W as (out, in))."""
        for i, lin in enumerate(m for m in net if isinstance(m, nn.Linear)):
            self.params[2 * i][...] = lin.weight.detach().numpy().T
            self.params[2 * i + 1][...] = lin.bias.detach().numpy()

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """The input and every layer's output (tanh on hidden layers, linear output last)."""
        outputs = [x]
        layers = len(self.params) // 2
        for i in range(layers):
            h = outputs[-1] @ self.params[2 * i] + self.params[2 * i + 1]
            outputs.append(np.tanh(h) if i < layers - 1 else h)
        return outputs

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network's output for a batch ``x`` of shape (rows, inputs)."""
        return self.activations(x)[-1]

    def backward(self, outputs: list[np.ndarray], grad_out: np.ndarray) -> np.ndarray:
        """Flat gradient of the loss given :meth:`activations`' ``outputs`` and dloss/doutput."""
        flat_grad = np.empty_like(self.flat)
        grads = self.views(flat_grad)
        g = grad_out
        for i in reversed(range(len(self.params) // 2)):
            np.matmul(outputs[i].T, g, out=grads[2 * i])
            g.sum(axis=0, out=grads[2 * i + 1])
            if i > 0:
                g = (g @ self.params[2 * i].T) * (1.0 - outputs[i] ** 2)
        return flat_grad


class Adam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) on one flat numpy vector, updated in place."""

    def __init__(self, params: np.ndarray, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = params
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = 1e-8
        self.steps = 0
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)

    def step(self, grad: np.ndarray) -> None:
        """One descent step on the loss whose gradient is ``grad``, with torch's bias correction."""
        self.steps += 1
        step_size = self.lr / (1.0 - self.beta1**self.steps)
        correction2 = math.sqrt(1.0 - self.beta2**self.steps)
        self.m += (1.0 - self.beta1) * (grad - self.m)
        self.v *= self.beta2
        self.v += (1.0 - self.beta2) * grad * grad
        self.params -= step_size * self.m / (np.sqrt(self.v) / correction2 + self.eps)


class Critic:
    """The private value network, fitted by minibatch Adam on the squared error to its targets."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...], lr: float) -> None:
        self.net = NumpyMLP(mlp([obs_dim, *hidden, 1], out_gain=1.0))
        self.opt = Adam(self.net.flat, lr)

    def values(self, norm_obs: np.ndarray) -> np.ndarray:
        """V(s) (float64) for observations of shape (..., obs_dim)."""
        flat = norm_obs.reshape(-1, norm_obs.shape[-1])
        return self.net.forward(flat)[:, 0].astype(np.float64).reshape(norm_obs.shape[:-1])

    def fit(
        self, obs: np.ndarray, targets: np.ndarray, epochs: int, rng: np.random.Generator, minibatch: int = 64
    ) -> None:
        """``epochs`` shuffled passes of minibatch Adam on ``mean((V(obs) - targets)^2)``."""
        targets = targets.astype(np.float32)[:, None]
        for _ in range(epochs):
            order = rng.permutation(len(obs))
            shuffled_obs, shuffled_targets = obs[order], targets[order]  # minibatches become slices
            for start in range(0, len(order), minibatch):
                x, y = shuffled_obs[start : start + minibatch], shuffled_targets[start : start + minibatch]
                outputs = self.net.activations(x)
                self.opt.step(self.net.backward(outputs, (2.0 / len(x)) * (outputs[-1] - y)))


def make_vec_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` stepped in this process, reset in the same step they end."""
    route_mujoco_warnings()
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def env_seeds(seed: int, num_envs: int) -> list[int]:
    """One seed per environment of a vector, hashed from ``seed``. An integer seed S would give gymnasium's
    environment j the seed S + j: runs seeded S and S + j would then share initial states."""
    return [int(x) for x in np.random.SeedSequence(seed).generate_state(num_envs, np.uint64)]


class Sampler:
    """Steps a vector of environments with the shared policy and estimates policy gradients."""

    def __init__(self, env_id: str, num_envs: int, seed: int, hidden: tuple[int, ...], est: EstimatorConfig) -> None:
        self.est = est
        self.envs = make_vec_env(env_id, num_envs)
        self.num_envs = num_envs
        torch.manual_seed(seed)
        self.policy, self.obs_dim = build_policy(env_id, hidden, est.log_std_init)
        self.critic = Critic(self.obs_dim, hidden, est.critic_lr) if est.critic else None
        self.actor = NumpyMLP(self.policy.net)
        self.action_std = self._action_std()
        self.rng = np.random.default_rng(seed)
        space = self.envs.single_action_space
        self.action_low = space.low if isinstance(space, gym.spaces.Box) else None
        self.action_high = space.high if isinstance(space, gym.spaces.Box) else None
        self.scaler = ReturnScaler(num_envs, est.gamma) if est.scale_rewards else None
        self.set_normalizer(RunningStats.empty(self.obs_dim))
        self.obs, _ = self.envs.reset(seed=env_seeds(seed, num_envs))
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    def set_policy(self, params: np.ndarray, obs_stats: RunningStats, return_stats: RunningStats | None = None) -> None:
        """Load the shared parameters and normalisers the server dispatched."""
        if self.scaler is not None and return_stats is not None:
            self.scaler.shared = return_stats
        set_flat(self.policy, params)
        self.actor.load(self.policy.net)
        self.action_std = self._action_std()
        self.set_normalizer(obs_stats)

    def set_normalizer(self, obs_stats: RunningStats) -> None:
        """Use ``obs_stats`` to normalise observations; its mean and std are computed once, here."""
        self.obs_stats = obs_stats
        self.obs_mean, self.obs_inv_std = obs_stats.mean, 1.0 / np.sqrt(obs_stats.var + 1e-8)

    def _action_std(self) -> np.ndarray | None:
        if self.policy.discrete:
            return None
        return self.policy.log_std.detach().exp().numpy().copy()

    def _act(self, norm_obs: np.ndarray) -> np.ndarray:
        """Sample actions at ``norm_obs``: the distribution of ``Policy.act``, drawn in numpy.

        Gaussian: mean + std * N(0, 1) (float32). Categorical: inverse CDF of softmax(logits) (int64).
        """
        out = self.actor.forward(norm_obs)
        if self.action_std is not None:
            return out + self.action_std * self.rng.standard_normal(out.shape, dtype=np.float32)
        logits = out.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        cumulative = np.cumsum(probs, axis=-1)
        u = self.rng.random((len(out), 1)) * cumulative[:, -1:]
        return (u > cumulative[:, :-1]).sum(axis=-1).astype(np.int64)

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        if not self.est.normalize_obs:
            return obs.astype(np.float32)
        # RunningStats.normalize(obs) with the mean and std computed once per dispatch; in place, and
        # minimum/maximum rather than np.clip, whose Python wrapper costs more than the arithmetic here
        x = obs - self.obs_mean
        x *= self.obs_inv_std
        np.maximum(x, -OBS_CLIP, out=x)
        np.minimum(x, OBS_CLIP, out=x)
        return x.astype(np.float32)

    def _values(self, norm_obs: np.ndarray) -> np.ndarray:
        if self.critic is None:
            return np.zeros(norm_obs.shape[:-1])
        return self.critic.values(norm_obs)

    def sample_gradient(self, batch: int) -> GradientEstimate:
        """Collect at least ``batch`` environment steps and return the policy-gradient estimate."""
        steps = math.ceil(batch / self.num_envs)
        n, d = self.num_envs, self.obs_dim
        raw_obs = np.zeros((steps, n, d))
        norm_obs = np.zeros((steps, n, d), dtype=np.float32)
        actions: list[np.ndarray] = []
        rewards = np.zeros((steps, n))
        dones = np.zeros((steps, n))
        truncated_at: list[tuple[int, int, np.ndarray]] = []
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        for t in range(steps):
            raw_obs[t] = self.obs.reshape(n, d)
            norm_obs[t] = self._normalize(raw_obs[t])
            action = self._act(norm_obs[t])
            actions.append(action)
            env_action = action
            if self.action_low is not None:
                env_action = np.minimum(np.maximum(action, self.action_low), self.action_high)
            self.obs, reward, terminated, truncated, info = self.envs.step(env_action)
            done = np.logical_or(terminated, truncated)
            self.episode_return += reward
            self.episode_length += 1
            if done.any():
                for j in np.flatnonzero(done):
                    finished_returns.append(float(self.episode_return[j]))
                    finished_lengths.append(int(self.episode_length[j]))
                    if truncated[j] and not terminated[j]:
                        truncated_at.append((t, int(j), np.asarray(info["final_obs"][j]).reshape(d)))
                self.episode_return[done] = 0.0
                self.episode_length[done] = 0
            rewards[t] = self.scaler(reward, done) if self.scaler else reward
            dones[t] = done
        obs_delta = RunningStats.of(raw_obs.reshape(-1, d))
        grad = self._estimate(norm_obs, actions, rewards, dones, truncated_at)
        return_delta = self.scaler.take_delta() if self.scaler is not None else RunningStats.empty(1)
        return GradientEstimate(
            grad, steps * n, tuple(finished_returns), tuple(finished_lengths), obs_delta, return_delta
        )

    def _estimate(
        self,
        norm_obs: np.ndarray,
        actions: list[np.ndarray],
        rewards: np.ndarray,
        dones: np.ndarray,
        truncated_at: list[tuple[int, int, np.ndarray]],
    ) -> np.ndarray:
        steps, n, d = norm_obs.shape
        values = self._values(norm_obs)
        next_values = np.zeros_like(values)
        next_values[:-1] = values[1:]
        next_values[-1] = self._values(self._normalize(self.obs.reshape(n, d)))
        next_values[dones.astype(bool)] = 0.0
        for t, j, final_obs in truncated_at:  # bootstrap time-limit truncations from the final observation
            next_values[t, j] = self._values(self._normalize(final_obs[None]))[0]
        if self.critic is None:
            lam_returns = gae(rewards, values, next_values, dones, self.est.gamma, 1.0)
            advantages = lam_returns - lam_returns.mean()
        else:
            advantages = gae(rewards, values, next_values, dones, self.est.gamma, self.est.gae_lambda)
            targets = (advantages + values).reshape(-1)
            self.critic.fit(norm_obs.reshape(-1, d), targets, self.est.critic_epochs, self.rng)
        advantages = advantages.reshape(-1)
        if self.est.normalize_advantages and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        obs_t = torch.as_tensor(norm_obs.reshape(-1, d))
        act_t = torch.as_tensor(np.concatenate(actions))
        dist = self.policy.distribution(obs_t)
        objective = (self.policy.log_prob(dist, act_t) * torch.as_tensor(advantages, dtype=torch.float32)).mean()
        if self.est.entropy_coef > 0:
            objective = objective + self.est.entropy_coef * self.policy.entropy(dist).mean()
        self.policy.zero_grad()
        objective.backward()
        return flat_grad(self.policy)

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()


EVAL_MAX_STEPS = 100_000
"""Longest evaluation episode of an environment registered without a time limit."""


def evaluate(
    policy: Policy, obs_stats: RunningStats | None, env_id: str, episodes: int, seed: int, deterministic: bool = True
) -> list[float]:
    """Run ``episodes`` full episodes with ``policy`` and return their undiscounted returns.

    An environment registered without a time limit has its episodes cut at ``EVAL_MAX_STEPS`` steps, so that
    a policy that never ends one (balancing forever) cannot hang the evaluation.
    """
    route_mujoco_warnings()
    env = gym.make(env_id)
    if env.spec is None or env.spec.max_episode_steps is None:
        env = gym.wrappers.TimeLimit(env, EVAL_MAX_STEPS)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                x = np.asarray(obs, dtype=np.float64).reshape(1, -1)
                if obs_stats is not None:
                    x = obs_stats.normalize(x)
                action = policy.act(x.astype(np.float32), deterministic=deterministic)[0]
                if isinstance(env.action_space, gym.spaces.Box):
                    action = np.clip(action, env.action_space.low, env.action_space.high)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns
