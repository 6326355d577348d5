"""Extrapolating per-layer costs from reduced-depth compiles, and the overlap model."""

import pytest

from flamingo_jax.training import cost_model


def _cost(depth, compute, comm_async=0.0, comm_sync=0.0):
  return cost_model.ProgramCost(depth=depth, compiler_s=compute, loop_s=0.0, kernel_s=0.0,
                                flops=1e12 * compute, bytes=0.0, comm_async_s=comm_async,
                                comm_sync_s=comm_sync, comm_bytes=0.0)


def test_a_line_through_three_depths_extrapolates_to_full_depth():
  # 2 ms of embedding / head / optimiser, 5 ms per layer: 80 layers take 402 ms.
  model = cost_model.fit([_cost((d,), 0.002 + 0.005 * d) for d in (1, 2, 3)])
  assert model.intercept["compute_s"] == pytest.approx(0.002)
  assert model.per_layer["compute_s"] == pytest.approx((0.005,))
  assert model.at((80,))["compute_s"] == pytest.approx(0.402)
  assert model.max_residual == pytest.approx(0.0, abs=1e-9)


def test_two_depth_variables_are_separated():
  costs = [_cost((lm, vis), 0.01 + 0.004 * lm + 0.001 * vis) for lm, vis in ((4, 1), (8, 1), (4, 2))]
  model = cost_model.fit(costs)
  assert model.per_layer["compute_s"] == pytest.approx((0.004, 0.001))
  assert model.at((40, 15))["compute_s"] == pytest.approx(0.01 + 0.16 + 0.015)


def test_a_nonlinear_cost_shows_in_the_residual():
  model = cost_model.fit([_cost((d,), 0.001 * d * d + 0.001) for d in (1, 2, 3)])
  assert model.max_residual > 0.05


def test_depths_that_do_not_vary_a_variable_are_rejected():
  with pytest.raises(ValueError, match="vary every depth"):
    cost_model.fit([_cost((4, 1), 1.0), _cost((8, 1), 2.0), _cost((12, 1), 3.0)])


def test_exposed_communication_per_layer_and_for_the_rest():
  # Per layer: 3 ms compute, 4 ms async comm (1 ms exposed), 0.5 ms sync. Rest: 10 ms compute,
  # 2 ms async (hidden), no sync. 10 layers: 40 ms compute, 15 ms exposed.
  costs = [_cost((d,), 0.010 + 0.003 * d, 0.002 + 0.004 * d, 0.0005 * d) for d in (1, 2)]
  step = cost_model.step_seconds(cost_model.fit(costs), (10,))
  assert step["compute_s"] == pytest.approx(0.040)
  assert step["exposed_comm_s"] == pytest.approx(0.015)
  assert step["step_s"] == pytest.approx(0.055)
