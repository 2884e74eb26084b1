"""Bad arguments to the irl API raise a ValueError / TypeError naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxeff import irl
from jaxeff.irl import CosineBasis, MountainCarParams

B = CosineBasis(4)
K = jax.random.key(0)


def _Z(A=2, k=4):
    rng = np.random.default_rng(0)
    Z = 0.3 * rng.normal(size=(A, k, k))
    Z[:, 0, 0] = 1.0
    return Z


Z = _Z()
ALPHA = np.array([0.0, 1.0, -0.5, 0.2])
STATES = np.linspace(0.05, 0.95, 5)[:, None]
GRID8 = np.linspace(0.05, 0.95, 8)[:, None]


def _sampler(key, s, a):
    return jnp.clip(s + 0.1 * (a - 0.5), 0.0, 1.0)


def _problem():
    return irl.synthetic_irl_problem(K, 4, num_actions=2)


CASES = [
    # bases
    ("low", lambda: CosineBasis(4, None, 1.0)),
    ("high", lambda: irl.LegendreBasis(4, 0.0, None)),
    ("bases", lambda: irl.TensorBasis(None, 2)),
    ("degree", lambda: irl.TensorBasis([B, B], None)),
    ("degree", lambda: irl.TensorBasis([B, B], 1.5)),
    # MountainCarParams
    ("max_speed", lambda: MountainCarParams(max_speed=0.0)),
    ("max_speed", lambda: MountainCarParams(max_speed=float("nan"))),
    ("max_speed", lambda: MountainCarParams(max_speed=None)),
    ("force", lambda: MountainCarParams(force=-1.0)),
    ("force", lambda: MountainCarParams(force=None)),
    ("frame_skip", lambda: MountainCarParams(frame_skip=2.5)),
    ("frame_skip", lambda: MountainCarParams(frame_skip=None)),
    ("noise_std", lambda: MountainCarParams(noise_std=float("nan"))),
    ("noise_std", lambda: MountainCarParams(noise_std=None)),
    ("min_position", lambda: MountainCarParams(min_position=1.0)),
    # envs
    ("params", lambda: irl.mountain_car_sampler(None)),
    ("s", lambda: irl.mountain_car_energy_policy(None)),
    ("s", lambda: irl.mountain_car_energy_policy(jnp.zeros((2, 1)))),
    ("s", lambda: irl.mountain_car_energy_policy(jnp.zeros((0, 2)))),
    ("s", lambda: irl.mountain_car_energy_policy(jnp.array([-0.5, jnp.nan]))),
    ("policy", lambda: irl.mountain_car_steps_to_goal(None, jnp.array([[-0.5, 0.0]]))),
    ("start_states", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.array([-0.5, 0.0]))),
    ("start_states", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.zeros((1, 1, 2)))),
    ("start_states", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.zeros((0, 2)))),
    ("start_states", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.array([[jnp.inf, 0.0]]))),
    ("start_states", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, None)),
    ("max_frames", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.zeros((1, 2)), max_frames=0)),
    ("max_frames", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.zeros((1, 2)), max_frames=2.5)),
    ("max_frames", lambda: irl.mountain_car_steps_to_goal(irl.mountain_car_energy_policy, jnp.zeros((1, 2)), max_frames=None)),
    # estimate
    ("actions", lambda: irl.estimate_transition_operator(B, _sampler, None, 64, K)),
    ("batch_size", lambda: irl.estimate_transition_operator(B, _sampler, 2, 64, K, batch_size=2.5)),
    ("batch_size", lambda: irl.estimate_transition_operator(B, _sampler, 2, 64, K, batch_size=None)),
    ("num_samples", lambda: irl.hoeffding_error_bound(B, 2.5, 0.1, 2)),
    ("num_samples", lambda: irl.hoeffding_error_bound(B, None, 0.1, 2)),
    ("delta", lambda: irl.hoeffding_error_bound(B, 100, None, 2)),
    ("num_actions", lambda: irl.hoeffding_error_bound(B, 100, 0.1, 0)),
    ("num_actions", lambda: irl.hoeffding_num_samples(B, 0.1, 0.1, -1)),
    ("num_actions", lambda: irl.hoeffding_num_samples(B, 0.1, 0.1, 2.5)),
    ("epsilon", lambda: irl.hoeffding_num_samples(B, None, 0.1, 2)),
    ("sampler", lambda: irl.relabel_actions(None, lambda s: 0, 2)),
    ("expert_policy", lambda: irl.relabel_actions(_sampler, None, 2)),
    ("actions", lambda: irl.relabel_actions(_sampler, lambda s: 0, None)),
    ("basis", lambda: irl.sample_uniform_states(None, K, 5)),
    ("n", lambda: irl.sample_uniform_states(B, K, 0)),
    ("n", lambda: irl.sample_uniform_states(B, K, -1)),
    ("n", lambda: irl.sample_uniform_states(B, K, 2.5)),
    ("n", lambda: irl.sample_uniform_states(B, K, None)),
    # reward
    ("Z_hat", lambda: irl.expert_advantage_operators(Z[0], 0, 0.9)),
    ("Z_hat", lambda: irl.expert_advantage_operators(Z[None], 0, 0.9)),
    ("Z_hat", lambda: irl.expert_advantage_operators(Z[:, :3], 0, 0.9)),
    ("Z_hat", lambda: irl.expert_advantage_operators(Z[:0], 0, 0.9)),
    ("Z_hat", lambda: irl.expert_advantage_operators(np.where(np.arange(4) == 0, np.nan, Z), 0, 0.9)),
    ("Z_hat", lambda: irl.expert_advantage_operators(None, 0, 0.9)),
    ("expert_action", lambda: irl.expert_advantage_operators(Z, 2, 0.9)),
    ("expert_action", lambda: irl.expert_advantage_operators(Z, -1, 0.9)),
    ("expert_action", lambda: irl.expert_advantage_operators(Z, 0.5, 0.9)),
    ("expert_action", lambda: irl.expert_advantage_operators(Z, None, 0.9)),
    ("gamma", lambda: irl.expert_advantage_operators(Z, 0, None)),
    ("gamma", lambda: irl.fit_reward(B, Z, 0, None, margin=0.1)),
    ("num_grid", lambda: irl.fit_reward(B, Z, 0, 0.9, margin=0.1, num_grid=2.5)),
    ("margin", lambda: irl.fit_reward(B, Z, 0, 0.9, margin=None)),
    ("num_grid", lambda: irl.ng_russell_lp(B, Z, 0, 0.9, num_grid=2.5)),
    ("penalty", lambda: irl.ng_russell_lp(B, Z, 0, 0.9, penalty=None)),
    ("alpha_bound", lambda: irl.ng_russell_lp(B, Z, 0, 0.9, alpha_bound=None)),
    ("basis", lambda: irl.state_grid(None, 5)),
    ("num_per_dim", lambda: irl.state_grid(B, 0)),
    ("num_per_dim", lambda: irl.state_grid(B, 2.5)),
    ("num_per_dim", lambda: irl.state_grid(B, None)),
    ("basis", lambda: irl.lipschitz_bound(None, np.eye(4))),
    ("F", lambda: irl.lipschitz_bound(B, np.ones(4))),
    ("F", lambda: irl.lipschitz_bound(B, np.eye(4)[:, :3])),
    ("F", lambda: irl.lipschitz_bound(B, np.eye(4)[:0])),
    ("F", lambda: irl.lipschitz_bound(B, None)),
    ("Z", lambda: irl.reward_margins(B, Z[None], ALPHA, 0, 0.9, STATES)),
    ("Z", lambda: irl.reward_margins(B, Z[:, :, :3], ALPHA, 0, 0.9, STATES)),
    ("alpha", lambda: irl.reward_margins(B, Z, ALPHA[None], 0, 0.9, STATES)),
    ("alpha", lambda: irl.reward_margins(B, Z, ALPHA[:3], 0, 0.9, STATES)),
    ("alpha", lambda: irl.reward_margins(B, Z, None, 0, 0.9, STATES)),
    ("states", lambda: irl.reward_margins(B, Z, ALPHA, 0, 0.9, None)),
    ("states", lambda: irl.reward_margins(B, Z, ALPHA, 0, 0.9, STATES[:, :0])),
    # forward
    ("Z", lambda: irl.q_values_in_basis(B, Z[:, :, :3], ALPHA, 0.9, 0, STATES)),
    ("Z", lambda: irl.q_values_in_basis(B, np.full_like(Z, np.inf), ALPHA, 0.9, 0, STATES)),
    ("alpha", lambda: irl.q_values_in_basis(B, Z, ALPHA[None], 0.9, 0, STATES)),
    ("gamma", lambda: irl.q_values_in_basis(B, Z, ALPHA, None, 0, STATES)),
    ("states", lambda: irl.q_values_in_basis(B, Z, ALPHA, 0.9, 0, STATES[:0])),
    ("alpha", lambda: irl.expert_optimal_fraction(B, Z, ALPHA[None], 0.9, 0, STATES)),
    ("alpha", lambda: irl.expert_optimal_fraction(B, Z, np.array([np.nan, 1.0, 0.0, 0.0]), 0.9, 0, STATES)),
    ("alpha", lambda: irl.expert_optimal_fraction(B, Z, np.array([np.inf, 1.0, 0.0, 0.0]), 0.9, 0, STATES)),
    ("alpha", lambda: irl.expert_optimal_fraction(B, Z, None, 0.9, 0, STATES)),
    ("states", lambda: irl.expert_optimal_fraction(B, Z, ALPHA, 0.9, 0, STATES[:0])),
    ("states", lambda: irl.expert_optimal_fraction(B, Z, ALPHA, 0.9, 0, np.full((5, 1), np.nan))),
    ("tol", lambda: irl.expert_optimal_fraction(B, Z, ALPHA, 0.9, 0, STATES, tol=None)),
    ("basis", lambda: irl.basis_value_iteration(None, Z, ALPHA, 0.9)),
    ("Z", lambda: irl.basis_value_iteration(B, Z[:0], ALPHA, 0.9)),
    ("alpha", lambda: irl.basis_value_iteration(B, Z, ALPHA[None], 0.9)),
    ("alpha", lambda: irl.basis_value_iteration(B, Z, ALPHA[:3], 0.9)),
    ("alpha", lambda: irl.basis_value_iteration(B, Z, None, 0.9)),
    ("gamma", lambda: irl.basis_value_iteration(B, Z, ALPHA, None)),
    ("num_grid", lambda: irl.basis_value_iteration(B, Z, ALPHA, 0.9, num_grid=2.5)),
    ("num_iters", lambda: irl.basis_value_iteration(B, Z, ALPHA, 0.9, num_iters=2.5)),
    ("num_iters", lambda: irl.basis_value_iteration(B, Z, ALPHA, 0.9, num_iters=None)),
    ("basis", lambda: irl.feature_expectations_in_basis(None, Z, 0, 0.9, GRID8)),
    ("Z", lambda: irl.feature_expectations_in_basis(B, Z[0], 0, 0.9, GRID8)),
    ("Z", lambda: irl.feature_expectations_in_basis(B, np.full_like(Z, np.inf), 0, 0.9, GRID8)),
    ("policy", lambda: irl.feature_expectations_in_basis(B, Z, np.full(8, 2), 0.9, GRID8)),
    ("policy", lambda: irl.feature_expectations_in_basis(B, Z, np.full(8, -1), 0.9, GRID8)),
    ("policy", lambda: irl.feature_expectations_in_basis(B, Z, np.full(8, 0.5), 0.9, GRID8)),
    ("policy", lambda: irl.feature_expectations_in_basis(B, Z, None, 0.9, GRID8)),
    ("grid", lambda: irl.feature_expectations_in_basis(B, Z, np.zeros(8, int), 0.9, GRID8[:7])),
    ("grid", lambda: irl.feature_expectations_in_basis(B, Z, np.zeros(8, int), 0.9, GRID8[None])),
    ("grid", lambda: irl.feature_expectations_in_basis(B, Z, np.zeros(8, int), 0.9, GRID8[:0])),
    ("gamma", lambda: irl.feature_expectations_in_basis(B, Z, 0, 1.5, GRID8)),
    ("gamma", lambda: irl.feature_expectations_in_basis(B, Z, 0, float("nan"), GRID8)),
    ("gamma", lambda: irl.feature_expectations_in_basis(B, Z, 0, None, GRID8)),
    ("num_grid", lambda: irl.projection_irl(B, Z, 0, 0.9, num_grid=2.5)),
    ("epsilon", lambda: irl.projection_irl(B, Z, 0, 0.9, epsilon=None)),
    ("max_iters", lambda: irl.projection_irl(B, Z, 0, 0.9, max_iters=2.5)),
    ("vi_iters", lambda: irl.projection_irl(B, Z, 0, 0.9, vi_iters=0)),
    ("vi_iters", lambda: irl.projection_irl(B, Z, 0, 0.9, vi_iters=2.5)),
    ("vi_iters", lambda: irl.projection_irl(B, Z, 0, 0.9, vi_iters=None)),
    ("result", lambda: irl.grid_policy(None)),
    # synthetic / experiment
    ("k", lambda: irl.synthetic_irl_problem(K, 2.5)),
    ("k", lambda: irl.synthetic_irl_problem(K, None)),
    ("num_actions", lambda: irl.synthetic_irl_problem(K, 4, None)),
    ("mass", lambda: irl.synthetic_irl_problem(K, 4, mass=None)),
    ("k", lambda: irl.contradictory_irl_problem(K, 2.5)),
    ("mass", lambda: irl.contradictory_irl_problem(K, 4, mass=1.5)),
    ("mass", lambda: irl.contradictory_irl_problem(K, 4, mass=-0.5)),
    ("mass", lambda: irl.contradictory_irl_problem(K, 4, mass=float("nan"))),
    ("basis", lambda: irl.cosine_kernel_sampler(None, Z)),
    ("Z", lambda: irl.cosine_kernel_sampler(B, Z[0])),
    ("Z", lambda: irl.cosine_kernel_sampler(B, Z[:0])),
    ("Z", lambda: irl.cosine_kernel_sampler(B, np.full_like(Z, np.nan))),
    ("Z", lambda: irl.cosine_kernel_sampler(B, None)),
    ("iters", lambda: irl.cosine_kernel_sampler(B, Z, iters=0)),
    ("iters", lambda: irl.cosine_kernel_sampler(B, Z, iters=2.5)),
    ("iters", lambda: irl.cosine_kernel_sampler(B, Z, iters=None)),
    ("success", lambda: irl.irl_bootstrap_interval(None, K)),
    ("num_boot", lambda: irl.irl_bootstrap_interval(np.ones((1, 4), bool), K, num_boot=0)),
    ("num_boot", lambda: irl.irl_bootstrap_interval(np.ones((1, 4), bool), K, num_boot=2.5)),
    ("level", lambda: irl.irl_bootstrap_interval(np.ones((1, 4), bool), K, level=None)),
    ("k", lambda: irl.irl_sample_complexity_curve(0, [0.1], 1.0)),
    ("k", lambda: irl.irl_sample_complexity_curve(None, [0.1], 1.0)),
    ("margins", lambda: irl.irl_sample_complexity_curve(4, [], 1.0)),
    ("margins", lambda: irl.irl_sample_complexity_curve(4, [np.inf, 0.1], 1.0)),
    ("margins", lambda: irl.irl_sample_complexity_curve(4, None, 1.0)),
    ("constant", lambda: irl.irl_sample_complexity_curve(4, [0.1], 0.0)),
    ("constant", lambda: irl.irl_sample_complexity_curve(4, [0.1], -1.0)),
    ("constant", lambda: irl.irl_sample_complexity_curve(4, [0.1], None)),
    ("problems", lambda: irl.irl_success_trials(None, [32], 1, K)),
    ("ns", lambda: irl.irl_success_trials([_problem()], None, 1, K)),
    ("num_trials", lambda: irl.irl_success_trials([_problem()], [32], 0, K)),
    ("num_trials", lambda: irl.irl_success_trials([_problem()], [32], 2.5, K)),
    ("margin_fraction", lambda: irl.irl_success_trials([_problem()], [32], 1, K, margin_fraction=None)),
    ("num_grid", lambda: irl.irl_success_trials([_problem()], [32], 1, K, num_grid=None)),
    ("num_check", lambda: irl.irl_success_trials([_problem()], [32], 1, K, num_check=0)),
    ("min_fraction", lambda: irl.irl_success_trials([_problem()], [32], 1, K, min_fraction=None)),
]


@pytest.mark.parametrize("name,call", CASES, ids=[f"{i}-{n}" for i, (n, _) in enumerate(CASES)])
def test_bad_argument_raises_naming_it(name, call):
    with pytest.raises((ValueError, TypeError), match=rf"`{name}`"):
        call()


_GVI = dict(sampler=_sampler, reward_fn=lambda s: s[0], low=np.array([0.0]), high=np.array([1.0]), num_per_dim=6,
            actions=2, gamma=0.9, key=K, num_iters=3, num_next=1)


@pytest.mark.parametrize("arg,value", [
    ("sampler", None), ("reward_fn", None), ("low", None), ("low", np.array([[0.0]])), ("low", 0.0),
    ("high", None), ("high", np.array([[1.0]])), ("num_per_dim", 2.5), ("num_per_dim", None), ("actions", None),
    ("gamma", None), ("num_iters", 0), ("num_iters", -1), ("num_iters", 2.5), ("num_iters", None),
    ("num_next", 0), ("num_next", -1), ("num_next", 2.5), ("num_next", None),
])
def test_grid_value_iteration_bad_argument(arg, value):
    with pytest.raises((ValueError, TypeError), match=rf"`{arg}`"):
        irl.grid_value_iteration(**{**_GVI, arg: value})


def test_valid_edge_cases_still_accepted():
    # integral floats are still accepted where int() accepted them
    assert MountainCarParams(frame_skip=2.0).frame_skip == 2
    assert irl.hoeffding_error_bound(B, 10000.0, 0.05, 2) == irl.hoeffding_error_bound(B, 10000, 0.05, 2)
    # an all-NaN alpha is fit_reward's "no reward found" and gives 0.0 (documented)
    assert irl.expert_optimal_fraction(B, Z, np.full(4, np.nan), 0.9, 0, STATES) == 0.0
    # degree 0 is a documented non-negative truncation level (the constant function only)
    assert irl.TensorBasis([B, B], 0).num_features == 1
    # a NaN constant means "not fitted" and gives a NaN curve (used by the paper notebook)
    assert np.all(np.isnan(irl.irl_sample_complexity_curve(4, [0.1, 0.2], float("nan"))))
    # F may be one k x k operator or one per deviating action
    F = irl.expert_advantage_operators(Z, 0, 0.9)
    assert irl.lipschitz_bound(B, F) == max(irl.lipschitz_bound(B, f) for f in F)
    # the energy policy takes one state [2] or a batch [..., 2] and reads the velocity
    S = jnp.array([[-0.5, 0.01], [0.1, -0.02], [0.3, 0.0]])
    assert irl.mountain_car_energy_policy(S).tolist() == [2, 0, 2]
    assert [int(irl.mountain_car_energy_policy(s)) for s in S] == [2, 0, 2]
    assert jax.vmap(irl.mountain_car_energy_policy)(S).tolist() == [2, 0, 2]
