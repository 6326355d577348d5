"""What XLA's cost analysis of a compiled step counts once or not at all, read from its HLO
(`collectives.parse_module`): the further trips of while loops (`loop_seconds`, with the matmul
FLOPs of each computation, `matmul_flops`) and Pallas kernels (`custom_kernels`)."""

from __future__ import annotations

import math
import re

from flamingo_jax.training.collectives import (ARRAY, Module, ints, operands, reachable,
                                                 while_loops)


def _dims(shape: str) -> list[int]:
  match = ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(",") if d] if match else []


def matmul_flops(module: Module) -> dict[str, float]:
  """Per computation: FLOPs of its dots and convolutions, each counted once (2 x output elements x
  contracted elements; a convolution contracts its kernel's input features: the TPU compiler writes
  batched matmuls as convolutions whose spatial windows stand for batch dimensions). Used only for
  a loop body's share of the program's matmul FLOPs."""
  shapes = {i.name: i.shape for instructions in module.computations.values() for i in instructions}
  out = {}
  for name, instructions in module.computations.items():
    total = 0.0
    for i in instructions:
      if i.op not in ("dot", "convolution"):
        continue
      names = operands(i)
      outputs = math.prod(_dims(i.shape))
      if i.op == "dot" and names:
        lhs = _dims(shapes.get(names[0], ""))
        contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", i.rest)
        total += 2 * outputs * math.prod(lhs[int(d)] for d in ints(contracted and contracted.group(1)))
      elif len(names) > 1:
        kernel = _dims(shapes.get(names[1], ""))
        labels = re.search(r"dim_labels=\w+_(\w+)->", i.rest)
        feature = labels.group(1).find("i") if labels else -1
        if 0 <= feature < len(kernel):
          total += 2 * outputs * kernel[feature]
    out[name] = total
  return out


MAIN_LOOP_SHARE = 0.5  # A loop body with at least this share of the matmul FLOPs is the step's.


def loop_seconds(module: Module, compiler_s: float, peak_flops: float) -> float:
  """Seconds the while loops' further trips add to a program that XLA's cost analysis counted with
  every body once (`compiler_s`): per loop, (trip count - 1) x runs of the loop x its body's time.
  A body holding most of the program's matmul FLOPs (>= MAIN_LOOP_SHARE: micro-batches, a layer
  scan) takes its FLOP share of `compiler_s`, the program's own mix of compute and memory time; a
  body holding a slice of them (the windowed-einsum loops the SPMD partitioner makes for FSDP
  matmuls: a matmul chunk beside a collective-permute) takes its matmul FLOPs over `peak_flops`, so
  the memory-bound work outside it is not multiplied by its trips."""
  flops = matmul_flops(module)
  total = sum(flops.values())
  if not total:
    return 0.0
  seconds = 0.0
  for body, trip, runs in while_loops(module):
    body_flops = sum(flops[c] for c in reachable(module.computations, body))
    share = body_flops / total
    once = share * compiler_s if share >= MAIN_LOOP_SHARE else body_flops / peak_flops
    seconds += (trip - 1) * runs * once
  return seconds


def custom_kernels(module: Module) -> int:
  """Runs per step of Pallas / Mosaic kernels (`tpu_custom_call`), which XLA's cost analysis
  does not cost."""
  return sum(module.runs.get(name, 0) for name, instructions in module.computations.items()
             for i in instructions if 'custom_call_target="tpu_custom_call"' in i.rest)
