"""Policy networks (Gaussian MLP for Box actions, categorical MLP for Discrete) and flat parameters."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from afedpg_ray.mujoco_warnings import route_mujoco_warnings


def mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    """Tanh MLP with orthogonal initialisation (sqrt(2) hidden gain, ``out_gain`` on the last layer)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """A stochastic policy over a Box or Discrete action space with state-independent log-std."""

    def __init__(
        self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64), log_std_init: float = 0.0
    ) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out = int(action_space.shape[0])
        else:
            raise ValueError(f"unsupported action space {action_space}; need Discrete or a 1-D Box")
        self.net = mlp([obs_dim, *hidden, out], out_gain=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out,), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """The action distribution at normalised observations ``obs``."""
        out = self.net(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability of ``actions`` (summed over action dimensions for Gaussians)."""
        lp = dist.log_prob(actions)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        """Entropy of each sample's action distribution (summed over action dimensions for Gaussians,
        as the joint entropy of independent dimensions; averaging them would weaken an entropy bonus by
        the number of dimensions)."""
        h = dist.entropy()
        return h if self.discrete else h.sum(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Sample (or take the mode of) actions for a batch of normalised observations."""
        dist = self.distribution(torch.as_tensor(obs, dtype=torch.float32))
        if deterministic:
            action = dist.probs.argmax(-1) if self.discrete else dist.mean
        else:
            action = dist.sample()
        return action.numpy()


def get_flat(module: nn.Module) -> np.ndarray:
    """All parameters as one float64 vector (the order of ``module.parameters()``)."""
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach().double().numpy()


def set_flat(module: nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector produced by :func:`get_flat`."""
    expected = num_params(module)
    if flat.shape != (expected,):
        raise ValueError(f"flat parameters have shape {flat.shape}, the policy needs ({expected},)")
    torch.nn.utils.vector_to_parameters(torch.tensor(flat, dtype=torch.float32), module.parameters())


def flat_grad(module: nn.Module) -> np.ndarray:
    """All parameters' ``.grad`` as one float32 vector (zeros where a grad is missing).

    float32 is what torch computed: float64 would add no precision and double what each gradient weighs on
    its way to the server (the server does its arithmetic in float64)."""
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in module.parameters()]
    return torch.cat(parts).detach().numpy()


def num_params(module: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in module.parameters())


def build_policy(env_id: str, hidden: tuple[int, ...], log_std_init: float) -> tuple[Policy, int]:
    """Make a policy for ``env_id``'s spaces; returns it and the observation dimension."""
    route_mujoco_warnings()
    env = gym.make(env_id)
    try:
        obs_space = env.observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ValueError(f"{env_id} has observation space {obs_space}; only Box observations are supported")
        obs_dim = int(np.prod(obs_space.shape))
        return Policy(obs_dim, env.action_space, hidden, log_std_init), obs_dim
    finally:
        env.close()
