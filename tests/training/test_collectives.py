"""The HLO reader behind the TPU estimate: collectives, replica groups, torus axes, loop counts."""

import jax
import jax.numpy as jnp
import pytest

from flamingo_jax.training import aot, collectives, hlo_loops

# A hand-written module: an all-gather in a fusion, an all-reduce in a loop of 5 trips (bound read
# from its condition), a reduce-scatter in the mesh form, a collective-permute, and a Pallas kernel
# whose config runs onto a second line starting with "}}" (the instructions after it still count).
HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_gather (p0: bf16[4,256]) -> bf16[8,256] {
  %p0 = bf16[4,256]{1,0} parameter(0)
  ROOT %all-gather.1 = bf16[8,256]{1,0} all-gather(%p0), channel_id=1, replica_groups=[2,2]<=[2,2]T(1,0), dimensions={0}, use_global_device_ids=true
}

%async_collective_fusion.1 (q: bf16[4,256]) -> bf16[8,256] {
  %q = bf16[4,256]{1,0} parameter(0)
  ROOT %all-gather.5 = bf16[8,256]{1,0} all-gather(%q), channel_id=5, replica_groups=[2,2]<=[4], dimensions={0}
}

%cond (c: (s32[], f32[1024])) -> pred[] {
  %c = (s32[], f32[1024]{0}) parameter(0)
  %bound = s32[] constant(5)
  %i = s32[] get-tuple-element(%c), index=0
  ROOT %lt = pred[] compare(%i, %bound), direction=LT
}

%body (t: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%t), index=0
  %x = f32[1024]{0} get-tuple-element(%t), index=1
  %all-reduce.2 = f32[1024]{0} all-reduce(%x), channel_id=2, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %out = (s32[], f32[1024]{0}) tuple(%i.1, %all-reduce.2)
}

ENTRY %main (a: bf16[4,256], t: (s32[], f32[1024]), y: f32[512]) -> f32[256] {
  %a.1 = bf16[4,256]{1,0} parameter(0)
  %t.1 = (s32[], f32[1024]{0}) parameter(1)
  %y = f32[512]{0} parameter(2)
  %kernel = f32[512]{0} custom-call(%y), custom_call_target="tpu_custom_call", backend_config={"body": "x
}}, metadata={op_name=\"splash\"}"}
  %fusion = bf16[8,256]{1,0} fusion(%a.1), kind=kLoop, calls=%fused_gather
  %overlapped = bf16[8,256]{1,0} fusion(%a.1), kind=kCustom, calls=%async_collective_fusion.1
  %while = (s32[], f32[1024]{0}) while(%t.1), condition=%cond, body=%body
  %cp = (f32[512]{0}, f32[512]{0}, u32[], u32[]) collective-permute-start(%y), channel_id=4, source_target_pairs={{0,1},{1,0},{2,3},{3,2}}
  ROOT %reduce-scatter.3 = f32[256]{0} reduce-scatter(%y), channel_id=3, replica_groups=mesh['x'=2,'y'=2] {'y'}, dimensions={0}, to_apply=%add
}
"""
LINK = 400e9 / 4 / 2  # v5e: 400 GB/s both ways over 4 ports -> one direction of one link.
COORDS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0))  # v5e:2x2, logical ids in mesh order.


def _by_name():
  module = collectives.parse_module(HLO)
  return module, {c.name: c for c in collectives.collectives(module, 4)}


def test_collectives_payloads_groups_and_run_counts():
  module, found = _by_name()
  assert set(found) == {"all-gather.1", "all-reduce.2", "reduce-scatter.3", "cp", "all-gather.5"}
  assert found["all-gather.5"].is_async and found["all-gather.5"].groups == ((0, 1), (2, 3))
  gather, reduce, scatter, permute = (found[n] for n in ("all-gather.1", "all-reduce.2",
                                                         "reduce-scatter.3", "cp"))
  assert (gather.payload_bytes, gather.groups, gather.runs) == (8 * 256 * 2, ((0, 2), (1, 3)), 1)
  assert (reduce.payload_bytes, reduce.groups, reduce.runs) == (4096, ((0, 1, 2, 3),), 5)
  # Reduce-scatter: its operand, the output times the group size.
  assert (scatter.payload_bytes, scatter.groups) == (2 * 256 * 4, ((0, 1), (2, 3)))
  assert (permute.op, permute.payload_bytes, permute.is_async) == ("collective-permute", 2048, True)
  assert not gather.is_async and not reduce.is_async
  assert collectives.while_loops(module) == [("body", 5, 1)]
  assert hlo_loops.custom_kernels(module) == 1


def test_communication_time_is_ring_bytes_over_the_spanned_links():
  module, found = _by_name()
  ici = collectives.Interconnect(COORDS, (2, 2), (False, False), LINK)
  assert ici.axes(found["all-gather.1"].groups[0]) == (1,)
  assert ici.axes((0, 1, 2, 3)) == (0, 1)
  gather = 4096 / 2 / LINK  # (n-1)/n of the gathered buffer over one line of links.
  reduce = 2 * 4096 * 3 / 4 / (2 * LINK)  # Twice (n-1)/n, both axes' links, 5 trips.
  scatter = 2048 / 2 / LINK
  permute = 2048 / LINK
  overlapped = 4096 / 2 / LINK  # The async collective fusion's all-gather, along axis 0.
  out = collectives.communication_seconds(collectives.collectives(module, 4), ici)
  assert out["sync"] == pytest.approx(gather + 5 * reduce + scatter, rel=1e-12)
  assert out["async"] == pytest.approx(permute + overlapped, rel=1e-12)
  assert out["bytes"] == 2048 + 5 * 6144 + 1024 + 2048 + 2048


def test_wraparound_doubles_a_rings_bandwidth():
  ici = collectives.Interconnect(COORDS, (2, 2), (True, False), LINK)
  assert ici.bandwidth((0,)) == 2 * LINK and ici.bandwidth((0, 1)) == 3 * LINK


def test_torus_axes_of_a_replica_group_on_a_4x4_slice():
  coords = tuple((x, y, 0) for y in range(4) for x in range(4))  # id = 4 y + x.
  ici = collectives.Interconnect(coords, (4, 4), (False, False), LINK)
  assert ici.axes((0, 1, 2, 3)) == (0,)
  assert ici.axes((1, 5, 9, 13)) == (1,)
  assert ici.axes((0, 1, 4, 5)) == (0, 1)


@pytest.mark.parametrize("generation, shape, wrap", [
    ("v5p", (2, 2, 1), (False,) * 3), ("v5p", (4, 4, 4), (True,) * 3),
    ("v5p", (4, 8, 8), (True,) * 3), ("v5p", (2, 4, 4), (False,) * 3),
    ("v5e", (16, 16), (True, True)), ("v6e", (8, 16), (False, True)),
])
def test_which_slices_close_their_rings(generation, shape, wrap):
  assert aot.CHIPS[generation].wraparound(shape) == wrap


def test_replica_group_forms():
  assert collectives.replica_groups("replica_groups=[2,2]<=[4]", 4) == [[0, 1], [2, 3]]
  assert collectives.replica_groups(
      "replica_groups=mesh['a'=2,'b'=1,'c'=2], device_ids=([2,2]T(1,0)) {'a'}", 4) == [
          [0, 1], [2, 3]]
  assert collectives.replica_groups("channel_id=1, dimensions={0}", 3) == [[0, 1, 2]]


def test_trip_count_of_a_compiled_scan_is_read_from_the_hlo():
  devices = aot.topology_devices(aot.parse_topology("v5e:2x2"))

  def f(x):
    return jax.lax.scan(lambda c, _: (jnp.sin(c) @ c, None), x, None, length=7)[0]
  sharding = jax.sharding.SingleDeviceSharding(devices[0])
  compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((128, 128), jnp.float32,
                                                   sharding=sharding)).compile()
  module = collectives.parse_module(compiled.as_text())
  loops = collectives.while_loops(module)
  assert [trip for _, trip, _ in loops] == [7]
  # The scan holds all of the program's matmuls: its 6 further trips at the program's own time.
  assert hlo_loops.loop_seconds(module, 1.0, peak_flops=1e12) == pytest.approx(6.0)


def test_a_small_loop_reruns_at_its_matmul_flops_over_peak():
  devices = aot.topology_devices(aot.parse_topology("v5e:2x2"))

  def f(x, big):
    small = jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=5)[0]
    return small.sum() + (big @ big).sum()
  sharding = jax.sharding.SingleDeviceSharding(devices[0])
  compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((128, 128), jnp.float32, sharding=sharding),
                              jax.ShapeDtypeStruct((1024, 1024), jnp.float32,
                                                   sharding=sharding)).compile()
  module = collectives.parse_module(compiled.as_text())
  assert [trip for _, trip, _ in collectives.while_loops(module)] == [5]
  # 4 further trips of one 128^3 matmul (2 * 128^3 FLOPs) at 1e12 FLOP/s, whatever compiler_s is.
  assert hlo_loops.loop_seconds(module, 1.0, peak_flops=1e12) == pytest.approx(
      4 * 2 * 128 ** 3 / 1e12)


# A windowed-einsum loop of 8 trips into which the compiler sank an all-gather, moved in pieces by
# two chained async collective fusion calls per trip (each hands its source, destination buffer and
# counter to the next; the last to the next trip), beside an all-gather fused per trip that hands
# no buffer back (a fresh collective every trip).
SUNK = """HloModule sunk

%async_collective_fusion.7 (shard: bf16[4,256], dest: bf16[8,256], n: u32[]) -> (bf16[4,256], bf16[8,256], bf16[8,256], u32[]) {
  %shard = bf16[4,256]{1,0} parameter(0)
  %dest = bf16[8,256]{1,0} parameter(1)
  %n = u32[] parameter(2)
  %all-gather.7 = bf16[8,256]{1,0} all-gather(%shard), channel_id=7, replica_groups=[2,2]<=[4], dimensions={0}
  ROOT %out = (bf16[4,256]{1,0}, bf16[8,256]{1,0}, bf16[8,256]{1,0}, u32[]) tuple(%shard, %dest, %all-gather.7, %n)
}

%async_collective_fusion.8 (shard.1: bf16[4,256]) -> bf16[8,256] {
  %shard.1 = bf16[4,256]{1,0} parameter(0)
  ROOT %all-gather.8 = bf16[8,256]{1,0} all-gather(%shard.1), channel_id=8, replica_groups=[2,2]<=[4], dimensions={0}
}

%cond (c: (s32[], bf16[4,256], bf16[8,256], u32[])) -> pred[] {
  %c = (s32[], bf16[4,256]{1,0}, bf16[8,256]{1,0}, u32[]) parameter(0)
  %bound = s32[] constant(8)
  %i = s32[] get-tuple-element(%c), index=0
  ROOT %lt = pred[] compare(%i, %bound), direction=LT
}

%wide.windowed_dot_general_body_ag (t: (s32[], bf16[4,256], bf16[8,256], u32[])) -> (s32[], bf16[4,256], bf16[8,256], u32[]) {
  %t = (s32[], bf16[4,256]{1,0}, bf16[8,256]{1,0}, u32[]) parameter(0)
  %i.1 = s32[] get-tuple-element(%t), index=0
  %s = bf16[4,256]{1,0} get-tuple-element(%t), index=1
  %d = bf16[8,256]{1,0} get-tuple-element(%t), index=2
  %k = u32[] get-tuple-element(%t), index=3
  %first = (bf16[4,256]{1,0}, bf16[8,256]{1,0}, bf16[8,256]{1,0}, u32[]) fusion(%s, %d, %k), kind=kCustom, calls=%async_collective_fusion.7
  %s.1 = bf16[4,256]{1,0} get-tuple-element(%first), index=0
  %d.1 = bf16[8,256]{1,0} get-tuple-element(%first), index=1
  %k.1 = u32[] get-tuple-element(%first), index=3
  %second = (bf16[4,256]{1,0}, bf16[8,256]{1,0}, bf16[8,256]{1,0}, u32[]) fusion(%s.1, %d.1, %k.1), kind=kCustom, calls=%async_collective_fusion.7
  %fresh = bf16[8,256]{1,0} fusion(%s), kind=kCustom, calls=%async_collective_fusion.8
  %s.2 = bf16[4,256]{1,0} get-tuple-element(%second), index=0
  %d.2 = bf16[8,256]{1,0} get-tuple-element(%second), index=2
  %k.2 = u32[] get-tuple-element(%second), index=3
  ROOT %next = (s32[], bf16[4,256]{1,0}, bf16[8,256]{1,0}, u32[]) tuple(%i.1, %s.2, %d.2, %k.2)
}

ENTRY %main (t.1: (s32[], bf16[4,256], bf16[8,256], u32[])) -> (s32[], bf16[4,256], bf16[8,256], u32[]) {
  %t.1 = (s32[], bf16[4,256]{1,0}, bf16[8,256]{1,0}, u32[]) parameter(0)
  ROOT %while = (s32[], bf16[4,256]{1,0}, bf16[8,256]{1,0}, u32[]) while(%t.1), condition=%cond, body=%wide.windowed_dot_general_body_ag
}
"""


def test_a_collective_sunk_into_a_loop_in_pieces_counts_once_per_loop():
  """The chain's two calls per trip over 8 trips move one all-gather; the fused one that hands
  nothing back runs every trip."""
  found = {c.name: c for c in collectives.collectives(collectives.parse_module(SUNK), 4)}
  assert (found["all-gather.7"].runs, found["all-gather.7"].is_async) == (1, True)
  assert found["all-gather.8"].runs == 8
