"""MountainCar as a generative model for IRL: pure-JAX dynamics and a gymnax adapter.

:func:`mountain_car_step` follows the classic-control equations of ``MountainCar-v0``
(Moore 1990; OpenAI gym ``classic_control/mountain_car.py``, reproduced by gymnax)::

    v' = clip(v + (a - 1)·force - cos(3x)·gravity, -max_speed, max_speed)
    x' = clip(x + v', min_position, max_position);   v' = 0 if x' = min_position and v' < 0

with actions a ∈ {0: push left, 1: no push, 2: push right}. As a generative model for IRL the
state space is the box ``[-1.2, 0.6] × [-0.07, 0.07]`` and there is no termination (the IRL
problem is a continuing discounted one); ``frame_skip`` repeats an action for several
frames (the per-frame effect of the engine, 0.001, is 0.7 % of the velocity range).
:func:`gymnax_mountain_car_sampler` wraps ``gymnax``'s implementation (optional extra
``jaxeff[rl]``) with the same interface, and the tests check both agree.

References:
  arXiv 2102.07937 (IRL with a generative model); Moore, "Efficient memory-based learning
  for robot control", 1990 (MountainCar).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxeff._core.validation import check_finite
from jaxeff.irl._checks import check_callable, check_int, check_real

__all__ = [
    "MountainCarParams",
    "mountain_car_step",
    "mountain_car_sampler",
    "gymnax_mountain_car_sampler",
    "mountain_car_energy_policy",
    "mountain_car_steps_to_goal",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MountainCarParams:
    """Constants of MountainCar-v0 (gym defaults), plus ``frame_skip`` and velocity ``noise_std``."""

    min_position: float = -1.2
    max_position: float = 0.6
    max_speed: float = 0.07
    goal_position: float = 0.5
    force: float = 0.001
    gravity: float = 0.0025
    frame_skip: int = 1
    noise_std: float = 0.0

    def __post_init__(self):
        for name in ("min_position", "max_position", "goal_position", "gravity"):
            check_real(name, getattr(self, name), -np.inf, np.inf, low_inclusive=False, high_inclusive=False)
        if not self.min_position < self.max_position:
            raise ValueError(
                f"`min_position` must be < `max_position`, got {self.min_position} and {self.max_position}."
            )
        check_real("max_speed", self.max_speed, 0.0, np.inf, low_inclusive=False, high_inclusive=False)
        check_real("force", self.force, 0.0, np.inf, high_inclusive=False)
        # frozen dataclass: store the validated int (``4.0`` was accepted by int() before).
        object.__setattr__(self, "frame_skip", check_int("frame_skip", self.frame_skip))
        check_real("noise_std", self.noise_std, 0.0, np.inf, high_inclusive=False)

    @property
    def low(self) -> np.ndarray:
        return np.array([self.min_position, -self.max_speed])

    @property
    def high(self) -> np.ndarray:
        return np.array([self.max_position, self.max_speed])


def mountain_car_step(s: jax.Array, action: jax.Array, params: MountainCarParams = MountainCarParams(), noise: jax.Array = 0.0) -> jax.Array:
    """One frame of MountainCar-v0 for state ``s = (position, velocity)`` and action in {0, 1, 2}.

    ``noise`` is added to the velocity before clipping (0 for the deterministic game).

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(v), 5) for v in mountain_car_step(jnp.array([-0.5, 0.0]), 2)]
      [-0.49918, 0.00082]
    """
    if np.shape(s) != (2,):
        raise ValueError(f"`s` must be a state (position, velocity) of shape (2,), got shape {np.shape(s)}.")
    if not isinstance(action, jax.core.Tracer) and not np.all(np.isin(np.asarray(action), (0, 1, 2))):
        raise ValueError(f"`action` must be 0, 1 or 2 (left, none, right), got {action!r}.")
    s = jnp.asarray(s, jnp.float32)
    x, v = s[0], s[1]
    v = v + (jnp.asarray(action, jnp.float32) - 1.0) * params.force - jnp.cos(3.0 * x) * params.gravity + noise
    v = jnp.clip(v, -params.max_speed, params.max_speed)
    x = jnp.clip(x + v, params.min_position, params.max_position)
    v = jnp.where((x <= params.min_position) & (v < 0), 0.0, v)
    return jnp.stack([x, v])


def _check_params(params):
    if not isinstance(params, MountainCarParams):
        raise ValueError(f"`params` must be a MountainCarParams, got {type(params).__name__}.")
    return params


def mountain_car_sampler(params: MountainCarParams = MountainCarParams()) -> Callable:
    """Generative model ``sampler(key, s, a) -> s'`` applying action ``a`` for ``params.frame_skip`` frames.

    With ``params.noise_std > 0`` each frame adds ``N(0, noise_std²)`` to the velocity (drawn
    from ``key``); otherwise the kernel is deterministic and ``key`` is not needed.
    """
    _check_params(params)

    def sampler(key, s, a):
        s = jnp.asarray(s, jnp.float32)
        if params.noise_std > 0:
            eps = params.noise_std * jax.random.normal(key, (params.frame_skip,))
        else:
            eps = jnp.zeros((params.frame_skip,))
        for f in range(params.frame_skip):
            s = mountain_car_step(s, a, params, eps[f])
        return s

    return sampler


def gymnax_mountain_car_sampler(frame_skip: int = 1) -> Callable:
    """The same generative model built on ``gymnax``'s ``MountainCar-v0`` (``env.step_env``).

    Requires the optional extra ``jaxeff[rl]`` (gymnax). Raises ImportError otherwise.
    """
    try:
        import gymnax
        from gymnax.environments.classic_control.mountain_car import EnvState
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gymnax_mountain_car_sampler needs gymnax: pip install 'jaxeff[rl]'.") from e
    env, env_params = gymnax.make("MountainCar-v0")
    if int(frame_skip) < 1:
        raise ValueError(f"`frame_skip` must be a positive int, got {frame_skip}.")

    def sampler(key, s, a):
        s = jnp.asarray(s, jnp.float32)
        state = EnvState(position=s[0], velocity=s[1], time=0)
        for _ in range(int(frame_skip)):
            key, sub = jax.random.split(key)
            _, state, _, _, _ = env.step_env(sub, state, a, env_params)
        return jnp.stack([state.position, state.velocity]).astype(jnp.float32)

    return sampler


def mountain_car_energy_policy(s: jax.Array) -> jax.Array:
    """The energy-pumping heuristic: push in the direction of the velocity (2 if v ≥ 0 else 0).

    ``s`` is one state ``(position, velocity)`` [2] or a batch of states [..., 2] (the action
    has the batch shape). It reaches the goal from every start state of MountainCar-v0 in
    well under 200 frames.

    Example:
      >>> import jax.numpy as jnp
      >>> mountain_car_energy_policy(jnp.array([[-0.5, 0.01], [0.1, -0.02]])).tolist()
      [2, 0]
    """
    if s is None:
        raise ValueError("`s` must be a state (position, velocity) [2] or a batch [..., 2], got None.")
    s = jnp.asarray(s)
    if s.ndim < 1 or s.shape[-1] != 2:
        raise ValueError(f"`s` must be a state (position, velocity) [2] or a batch [..., 2], got shape {s.shape}.")
    if s.size == 0:
        raise ValueError(f"`s` must hold at least one state, got shape {s.shape}.")
    check_finite("s", s)
    return jnp.where(s[..., 1] >= 0, 2, 0).astype(jnp.int32)


def mountain_car_steps_to_goal(
    policy: Callable[[jax.Array], jax.Array],
    start_states: jax.Array,
    params: MountainCarParams = MountainCarParams(),
    *,
    max_frames: int = 200,
) -> jax.Array:
    """Frames until ``position ≥ goal_position`` (``max_frames`` if never), per start state [n].

    The policy is queried every ``params.frame_skip`` frames and its action repeated in
    between (deterministic dynamics; the MountainCar-v0 return is minus this count).
    ``start_states`` is [n, 2] (position, velocity), ``max_frames`` a positive int.
    """
    check_callable("policy", policy, "a function state [2] -> action in {0, 1, 2}")
    if start_states is None:
        raise ValueError("`start_states` must be an array [n, 2] of (position, velocity) states, got None.")
    start_states = jnp.asarray(start_states, jnp.float32)
    if start_states.ndim != 2 or start_states.shape[1] != 2:
        raise ValueError(
            f"`start_states` must have shape (n, 2) (position, velocity per start state), got {start_states.shape}."
        )
    if start_states.shape[0] < 1:
        raise ValueError(f"`start_states` must hold at least one start state, got shape {start_states.shape}.")
    check_finite("start_states", start_states)
    _check_params(params)
    max_frames = check_int("max_frames", max_frames)
    skip = params.frame_skip

    def one(s0):
        def body(carry, t):
            s, a, done, steps = carry
            a = jnp.where(t % skip == 0, jnp.asarray(policy(s), jnp.int32), a)
            s_new = mountain_car_step(s, a, params)
            s = jnp.where(done, s, s_new)
            steps = steps + (~done).astype(jnp.int32)
            done = done | (s[0] >= params.goal_position)
            return (s, a, done, steps), None

        (s, a, done, steps), _ = jax.lax.scan(body, (s0, jnp.int32(1), jnp.bool_(False), jnp.int32(0)), jnp.arange(max_frames))
        return steps

    return jax.jit(jax.vmap(one))(start_states)
