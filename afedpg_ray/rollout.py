"""Sampling and the gradient estimator: plain Python, no Ray.

An agent steps ``num_envs`` environments at once with batched inference, then estimates the policy
gradient with GAE(lambda) advantages from a private critic (or a batch-mean baseline). Only the
policy gradient leaves the agent; the critic and the reward scaler stay private.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from afedpg_ray.config import EstimatorConfig
from afedpg_ray.normalizer import RunningStats
from afedpg_ray.policy import Policy, build_policy, flat_grad, mlp, set_flat


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
    """Divides rewards by the running std of the discounted return (as SB3's VecNormalize does)."""

    def __init__(self, num_envs: int, gamma: float) -> None:
        self.gamma = gamma
        self.returns = np.zeros(num_envs)
        self.stats = RunningStats.empty(1)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scaled rewards; updates the statistics with this step's discounted returns."""
        self.returns = self.returns * self.gamma + rewards
        self.stats = self.stats.merge(RunningStats.of(self.returns[:, None]))
        self.returns[dones] = 0.0
        return rewards / math.sqrt(float(self.stats.var[0]) + 1e-8)


@dataclass(frozen=True)
class GradientEstimate:
    """An agent's gradient (ascent direction) with what it learned about the environment."""

    grad: np.ndarray
    samples: int
    episode_returns: tuple[float, ...]
    episode_lengths: tuple[int, ...]
    obs_delta: RunningStats


class Sampler:
    """Steps a vector of environments with the shared policy and estimates policy gradients."""

    def __init__(self, env_id: str, num_envs: int, seed: int, hidden: tuple[int, ...], est: EstimatorConfig) -> None:
        self.est = est
        self.envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        )
        self.num_envs = num_envs
        torch.manual_seed(seed)
        self.policy, self.obs_dim = build_policy(env_id, hidden, est.log_std_init)
        self.critic = mlp([self.obs_dim, *hidden, 1], out_gain=1.0) if est.critic else None
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=est.critic_lr) if self.critic else None
        space = self.envs.single_action_space
        self.action_low = space.low if isinstance(space, gym.spaces.Box) else None
        self.action_high = space.high if isinstance(space, gym.spaces.Box) else None
        self.scaler = ReturnScaler(num_envs, est.gamma) if est.scale_rewards else None
        self.obs_stats = RunningStats.empty(self.obs_dim)
        self.obs, _ = self.envs.reset(seed=seed)
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    def set_policy(self, params: np.ndarray, obs_stats: RunningStats) -> None:
        """Load the shared parameters and normaliser the server dispatched."""
        set_flat(self.policy, params)
        self.obs_stats = obs_stats

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        if not self.est.normalize_obs:
            return obs.astype(np.float32)
        return self.obs_stats.normalize(obs).astype(np.float32)

    def _values(self, norm_obs: np.ndarray) -> np.ndarray:
        if self.critic is None:
            return np.zeros(norm_obs.shape[:-1])
        with torch.no_grad():
            return self.critic(torch.as_tensor(norm_obs)).squeeze(-1).double().numpy()

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
            action = self.policy.act(norm_obs[t])
            actions.append(action)
            env_action = action if self.action_low is None else np.clip(action, self.action_low, self.action_high)
            self.obs, reward, terminated, truncated, info = self.envs.step(env_action)
            done = np.logical_or(terminated, truncated)
            self.episode_return += reward
            self.episode_length += 1
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
        return GradientEstimate(grad, steps * n, tuple(finished_returns), tuple(finished_lengths), obs_delta)

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
            self._fit_critic(norm_obs.reshape(-1, d), (advantages + values).reshape(-1))
        advantages = advantages.reshape(-1)
        if self.est.normalize_advantages and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        obs_t = torch.as_tensor(norm_obs.reshape(-1, d))
        act_t = torch.as_tensor(np.concatenate(actions))
        dist = self.policy.distribution(obs_t)
        objective = (self.policy.log_prob(dist, act_t) * torch.as_tensor(advantages, dtype=torch.float32)).mean()
        if self.est.entropy_coef > 0:
            objective = objective + self.est.entropy_coef * dist.entropy().mean()
        self.policy.zero_grad()
        objective.backward()
        return flat_grad(self.policy)

    def _fit_critic(self, obs: np.ndarray, targets: np.ndarray, minibatch: int = 64) -> None:
        assert self.critic is not None and self.critic_opt is not None
        obs_t = torch.as_tensor(obs)
        target_t = torch.as_tensor(targets, dtype=torch.float32)
        for _ in range(self.est.critic_epochs):
            order = torch.randperm(len(obs_t))
            for start in range(0, len(order), minibatch):
                idx = order[start : start + minibatch]
                loss = ((self.critic(obs_t[idx]).squeeze(-1) - target_t[idx]) ** 2).mean()
                self.critic_opt.zero_grad()
                loss.backward()
                self.critic_opt.step()

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()


def evaluate(
    policy: Policy, obs_stats: RunningStats | None, env_id: str, episodes: int, seed: int, deterministic: bool = True
) -> list[float]:
    """Run ``episodes`` full episodes with ``policy`` and return their undiscounted returns."""
    env = gym.make(env_id)
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
