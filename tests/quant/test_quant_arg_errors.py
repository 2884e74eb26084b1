"""Bad arguments of the quant family raise a ValueError naming the argument (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxeff.quant as Q


def _r(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


W = _r(8, 4)
X = _r(16, 8, seed=1)


class _MLP(nnx.Module):
    def __init__(self):
        self.up = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
        self.down = nnx.Linear(8, 4, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.down(jax.nn.relu(self.up(x)))


@pytest.mark.parametrize("call, match", [
    (lambda: Q.quantize(None, "int8"), "`x`"),
    (lambda: Q.quantize(W[:0], "int8", axis=0), "`x`"),
    (lambda: Q.fake_quant(None, "int8"), "`x`"),
    (lambda: Q.fake_quant(W[:0], "int8", axis=0), "`x`"),
    (lambda: Q.quantize(W, "int8", calibration="percentile", percentile=None), "percentile"),
    (lambda: Q.quantize(W, "int8", calibration="mse", mse_grid=2.5), "mse_grid"),
    (lambda: Q.quantize(W, "int8", calibration="mse", mse_grid=None), "mse_grid"),
    (lambda: Q.pack_int(None, "int4"), "codes"),
    (lambda: Q.unpack_int(None, "int4", 6), "packed"),
])
def test_quantize_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("fn", [Q.quantize, Q.fake_quant])
def test_quantize_list_is_the_array(fn):
    a = fn(W, "int8", axis=0)
    b = fn(np.asarray(W).tolist(), "int8", axis=0)
    da = a.dequantize() if hasattr(a, "dequantize") else a
    db = b.dequantize() if hasattr(b, "dequantize") else b
    np.testing.assert_array_equal(np.asarray(da), np.asarray(db))


@pytest.mark.parametrize("call, match", [
    (lambda: Q.rtn(W[:0], "int4"), "`w`"),
    (lambda: Q.rtn(None, "int4"), "`w`"),
    (lambda: Q.rtn(W, "int4", percentile=None), "percentile"),
    (lambda: Q.rtn(W, "int4", mse_grid=2.5), "mse_grid"),
    (lambda: Q.rtn(W, "int4", mse_grid=None), "mse_grid"),
    (lambda: Q.gptq(W, X, "int4", damp=None), "damp"),
    (lambda: Q.gptq(W, None, "int4"), "`x`"),
    (lambda: Q.quantease(W, X, "int4", damp=None), "damp"),
    (lambda: Q.awq(W, None, "int4"), "`x`"),
    (lambda: Q.awq(W, X[:0], "int4"), "`x`"),
    (lambda: Q.smoothquant(W, X[:0]), "`x`"),
    (lambda: Q.smoothquant(W, None), "`x`"),
    (lambda: Q.smoothquant(W, X, alpha=None), "alpha"),
    (lambda: Q.calibration_hessian(None), "`x`"),
    (lambda: Q.calibration_hessian(X[:0]), "`x`"),
    (lambda: Q.layer_reconstruction_error(X[:0], W, W), "`x`"),
    (lambda: Q.layer_reconstruction_error(X, W, W[None]), "w_hat"),
    (lambda: Q.layer_reconstruction_error(X, W, W[0]), "w_hat"),
    (lambda: Q.layer_reconstruction_error(X, W, W[:7]), "w_hat"),
    (lambda: Q.layer_reconstruction_error(X, W, None), "w_hat"),
])
def test_ptq_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", ["rtn", "gptq", "quantease", "awq", "smoothquant"])
def test_ptq_list_kernel_is_the_array(name):
    fn = getattr(Q, name)
    extra = () if name == "rtn" else (X,)
    kw = {"num_iters": 2} if name == "quantease" else {}
    fmt = "int8" if name == "smoothquant" else "int4"
    a = fn(W, *extra, fmt, **kw).dequantize()
    b = fn(np.asarray(W).tolist(), *extra, fmt, **kw).dequantize()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_layer_reconstruction_error_list_w_hat_and_valid():
    e = Q.layer_reconstruction_error(X, W, np.asarray(W + 0.1).tolist())
    np.testing.assert_allclose(float(e), float(Q.layer_reconstruction_error(X, W, W + 0.1)), rtol=1e-6)


QW = Q.quantize(_r(8, 3, seed=2), "int8", axis=0)
DN = (((1,), (0,)), ((), ()))


@pytest.mark.parametrize("call, match", [
    (lambda: Q.quantized_dot_general(None, QW, DN), "lhs"),
    (lambda: Q.quantized_dot_general(_r(2, 8), None, DN), "rhs"),
    (lambda: Q.quantized_dot_general(_r(8), QW, DN), "dimension_numbers"),
    (lambda: Q.quantized_dot_general(_r(2, 8), QW, (((5,), (0,)), ((), ()))), "dimension_numbers"),
    (lambda: Q.quantized_dot_general(_r(2, 8), QW, None), "dimension_numbers"),
    (lambda: Q.quantized_dot_general(_r(2, 8), QW, (((1,), (0, 1)), ((), ()))), "dimension_numbers"),
    (lambda: Q.quantized_matmul(None, QW), "`x`"),
    (lambda: Q.quantized_matmul(_r(2, 8), None), "`w`"),
    (lambda: Q.quantized_matmul(_r(0, 8), QW, act_fmt="int8"), "`x`"),
    (lambda: Q.quantized_matmul(_r(2, 8), QW, act_fmt="int8", act_calibration="nope"), "act_calibration"),
    (lambda: Q.quantized_matmul(_r(2, 8), QW, act_fmt="int8", act_calibration=None), "act_calibration"),
])
def test_matmul_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_matmul_list_operand_is_the_array():
    x = _r(2, 8)
    a = Q.quantized_matmul(x, QW, act_fmt="int8")
    b = Q.quantized_matmul(np.asarray(x).tolist(), QW, act_fmt="int8")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = Q.quantized_dot_general(np.asarray(x).tolist(), QW, DN)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(Q.quantized_dot_general(x, QW, DN)))


def test_matmul_checks_work_under_jit():
    f = jax.jit(lambda x: Q.quantized_matmul(x, QW, act_fmt="int8"))
    assert f(_r(2, 8)).shape == (2, 3)


@pytest.mark.parametrize("gs", [0, -1, 2.5, True])
def test_quant_rule_group_size(gs):
    with pytest.raises(ValueError, match="group_size"):
        Q.QuantRule(weight_fmt="int8", group_size=gs)


@pytest.mark.parametrize("call, match", [
    (lambda: Q.quantize_model(None, Q.QuantRule(weight_fmt="int8")), "model"),
    (lambda: Q.prepare_qat(None, Q.QuantRule(weight_fmt="int8")), "model"),
    (lambda: Q.quant_weight_bytes(None), "model_or_tree"),
    (lambda: Q.save_quantized(None, Q.quantize_model(_MLP(), Q.QuantRule(weight_fmt="int8"))), "path"),
    (lambda: Q.dequantize_params({"a": 1}, dtype="no-such-dtype"), "dtype"),
    (lambda: Q.dequantize_params({"a": 1}, dtype=jnp.int32), "dtype"),
])
def test_model_level_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()
