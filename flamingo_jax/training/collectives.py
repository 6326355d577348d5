"""The compiled step's HLO, read for what XLA's cost model leaves out: collectives and loop counts.

`parse_module(compiled.as_text())` splits the module into computations and counts how often each runs
per step (`Module.runs`): a while body runs its trip count (`trip_count`: the compiler's
known_trip_count, else its condition's bound), everything else once per call. `collectives(module)`
lists every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute (sync, `-start`,
in an `async-start` or in the TPU's async collective fusions) with its payload, replica groups and
run count (a collective the compiler moves in pieces through a loop counts once per loop:
`_continued_runs`); `communication_seconds` charges each the ring algorithm's bytes per chip over
the ICI links of the torus axes its groups span (`Interconnect`, from the data sheets). What XLA's cost
analysis counts once or not at all (loop trips, Pallas kernels) is costed in `hlo_loops.py`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

OPS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 0.5, "u4": 0.5}
ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|called_computations)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str  # The result type as printed: `bf16[64,256]{1,0:T(8,128)}` or a tuple of them.
  op: str
  rest: str  # Operands and attributes.


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instruction]]
  entry: str
  runs: dict[str, int]  # Executions of each computation per run of the entry computation.


def array_bytes(shape: str) -> float:
  """Bytes of every array in an HLO type (a tuple: their sum)."""
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in ARRAY.findall(shape))


def operands(instruction: Instruction) -> list[str]:
  """The names of the instruction's operands (those before its attributes)."""
  return re.findall(r"%([\w.\-]+)", instruction.rest.split(")", 1)[0])


def parse_module(text: str) -> Module:
  """The computations of an HLO module's text and how often each runs (while trip counts)."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = computations.setdefault(header.group(2), [])
      entry = header.group(2) if header.group(1) else entry
    elif line == "}":
      current = None
    elif current is not None:
      match = _INSTRUCTION.match(line)
      if match:
        current.append(Instruction(*match.groups()))
      elif current:  # An attribute (a kernel's config) that ran onto further lines.
        last = current[-1]
        current[-1] = dataclasses.replace(last, rest=last.rest + "\n" + line)
  if not entry:
    raise ValueError("The HLO text has no ENTRY computation: pass compiled.as_text().")
  return Module(computations, entry, _runs(computations, entry))


def trip_count(instruction: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
  """A while op's trip count: the compiler's `known_trip_count`, else the bound of its condition
  `counter < constant` (a scan's loop: counter from 0 in steps of 1); None if neither is there."""
  known = _TRIP.search(instruction.rest)
  if known:
    return int(known.group(1))
  names = dict((kind, n.lstrip("%")) for kind, n in _CALLS.findall(instruction.rest))
  condition = computations.get(names.get("condition", ""), [])
  constants = {i.name: i.rest for i in condition if i.op == "constant"}
  for i in condition:
    if i.op == "compare" and "direction=LT" in i.rest:
      bound = operands(i)[-1:]
      if bound and bound[0] in constants:
        return int(constants[bound[0]].split(")", 1)[0])
  return None


def _callees(instruction: Instruction,
             computations: dict[str, list[Instruction]]) -> list[tuple[str, int]]:
  """(computation, runs per execution of `instruction`) for everything it calls."""
  trip = trip_count(instruction, computations) if instruction.op == "while" else None
  out = []
  for kind, names in _CALLS.findall(instruction.rest):
    count = (trip or 1) if kind in ("body", "condition") else 1
    out += [(name.strip().lstrip("%"), count) for name in names.strip("{}").split(",")
            if name.strip()]
  return out


def _runs(computations: dict[str, list[Instruction]], entry: str) -> dict[str, int]:
  """Executions per step of every computation reachable from `entry`: over its call sites, the
  caller's runs times the site's count (a while body: the trip count)."""
  names = reachable(computations, entry)
  callers: dict[str, list[tuple[str, int]]] = {}
  for name in names:
    for instruction in computations.get(name, []):
      for callee, count in _callees(instruction, computations):
        callers.setdefault(callee, []).append((name, count))
  done = {entry: 1}

  def count(name: str) -> int:
    if name not in done:
      done[name] = sum(count(caller) * k for caller, k in callers.get(name, []))
    return done[name]
  return {name: count(name) for name in names}


def reachable(computations: dict[str, list[Instruction]], root: str) -> set[str]:
  """`root` and every computation it calls, directly or not."""
  seen, pending = {root}, [root]
  while pending:
    for instruction in computations.get(pending.pop(), []):
      for callee, _ in _callees(instruction, computations):
        if callee not in seen:
          seen.add(callee)
          pending.append(callee)
  return seen


def while_loops(module: Module) -> list[tuple[str, int, int]]:
  """(body computation, trip count, runs of the while op per step) of every while loop run."""
  out = []
  for name, instructions in module.computations.items():
    for instruction in instructions:
      if instruction.op == "while" and module.runs.get(name):
        body = dict((kind, n.lstrip("%")) for kind, n in _CALLS.findall(instruction.rest))["body"]
        trip = trip_count(instruction, module.computations)
        if trip is None:
          raise ValueError(f"While loop {instruction.name} has no trip count the estimate can read "
                           "(no known_trip_count, no `counter < constant` condition).")
        out.append((body, trip, module.runs[name]))
  return out


# ---------------------------------------------------------------------------------- replica groups

def _iota(dims: Sequence[int], perm: Sequence[int] | None) -> np.ndarray:
  ids = np.arange(math.prod(dims)).reshape(dims)
  return (ids.transpose(perm) if perm else ids).reshape(-1)


def ints(text: str) -> list[int]:
  return [int(x) for x in re.findall(r"\d+", text or "")]


def replica_groups(rest: str, num_devices: int) -> list[list[int]]:
  """The groups of logical device ids of a collective, from any of XLA's printed forms:
  `{{0,1},{2,3}}`, iota `[2,2]<=[4]` / `[2,2]<=[2,2]T(1,0)`, or the mesh form
  `mesh['a'=2,'b'=2], device_ids=([2,2]T(1,0)) {'a'}` (groups along the listed axes). No groups:
  one group of every device."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
                   r" \{([^}]*)\}", rest)
  if mesh:
    axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
    sizes = [int(s) for _, s in axes]
    ids = (_iota(ints(mesh.group(2)), ints(mesh.group(3)) or None) if mesh.group(2)
           else np.arange(math.prod(sizes))).reshape(sizes)
    spanned = [i for i, (name, _) in enumerate(axes) if f"'{name}'" in mesh.group(4)]
    kept = [i for i in range(len(axes)) if i not in spanned]
    size = math.prod(sizes[i] for i in spanned)
    return ids.transpose(kept + spanned).reshape(-1, size).tolist()
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", rest)
  if iota:
    groups, size = int(iota.group(1)), int(iota.group(2))
    return _iota(ints(iota.group(3)), ints(iota.group(4)) or None).reshape(groups, size).tolist()
  listed = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", rest)
  if listed and listed.group(1):
    return [ints(g) for g in re.findall(r"\{([\d,]*)\}", listed.group(1))]
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", rest)
  if pairs:
    return [ints(p) for p in re.findall(r"\{(\d+,\d+)", pairs.group(1) + "}")]
  return [list(range(num_devices))]


# ------------------------------------------------------------------------------------ collectives

@dataclasses.dataclass(frozen=True)
class Collective:
  op: str  # One of OPS.
  payload_bytes: float  # Per device: all-gather / all-reduce / all-to-all / permute result, reduce-scatter operand.
  groups: tuple[tuple[int, ...], ...]  # Logical device ids (the executable's device order).
  is_async: bool  # A `-start` op or one inside an async collective fusion: may overlap compute.
  runs: int  # Executions per step.
  name: str


def _payload(op: str, instruction: Instruction, group_size: int) -> float:
  """Bytes of the full buffer the collective moves, per device (see Collective.payload_bytes)."""
  arrays = [array_bytes(f"{d}[{s}]") for d, s in ARRAY.findall(instruction.shape)]
  if instruction.op.endswith("-start") and op in ("all-gather", "collective-permute"):
    arrays = arrays[len(arrays) // 2:] if op == "all-gather" else arrays[1:2]
  total = sum(arrays)
  return total * group_size if op == "reduce-scatter" else total


def _continued(instructions: list[Instruction]) -> bool:
  """An async collective fusion that moves its collective in pieces: its ROOT tuple hands back a
  parameter of the collective's result type (the destination buffer, threaded to the next piece)."""
  params = {i.name: i.shape.split("{")[0] for i in instructions if i.op == "parameter"}
  results = {i.shape.split("{")[0] for i in instructions if i.op.removesuffix("-start") in OPS}
  root = instructions[-1] if instructions else None
  if root is None or root.op != "tuple":
    return False
  return any(params.get(name) in results for name in operands(root))


def _continued_runs(module: Module) -> dict[str, int]:
  """Runs per step of the collective of each continued async collective fusion (`_continued`).

  The TPU compiler sinks a collective into the loops the SPMD partitioner makes for windowed
  einsums, to overlap it with their matmul chunks: a chain of fusion calls, each handing the same
  source, destination and progress counters to the next, the last to the next trip. The chain moves
  the collective once per execution of the loop, in pieces; its head (a call whose source does
  not come from an earlier call of the chain) counts once per loop execution, its other calls not
  at all."""
  trips = {body: trip for body, trip, _ in while_loops(module)}
  chained = {name for name, instructions in module.computations.items()
             if name in module.runs and _continued(instructions)}
  out = dict.fromkeys(chained, 0)
  for caller, instructions in module.computations.items():
    runs = module.runs.get(caller, 0)
    calls = {}
    for i in instructions:
      callee = next((c for c, _ in _callees(i, module.computations) if c in chained), None)
      if callee and runs:
        calls[i.name] = callee
    if not calls:
      continue
    sources = {i.name: operands(i) for i in instructions if i.op == "get-tuple-element"}
    for i in instructions:
      if i.name not in calls:
        continue
      if not any(src in calls for op in operands(i) for src in sources.get(op, ())):
        out[calls[i.name]] += runs // trips.get(caller, 1)
  return out


def collectives(module: Module, num_devices: int) -> list[Collective]:
  """Every collective reachable from the entry computation, with its run count per step (a
  continued collective's: `_continued_runs`)."""
  continued = _continued_runs(module)
  started = set()  # Computations an `async-start` runs beside the caller's compute.
  for instructions in module.computations.values():
    for i in instructions:
      if i.op == "async-start":
        started |= {callee for callee, _ in _callees(i, module.computations)}
  out = []
  for name, instructions in module.computations.items():
    runs = continued.get(name, module.runs.get(name, 0))
    # The TPU compiler overlaps a collective with compute in an async collective fusion (the
    # collective beside a matmul), or starts it with an AsyncCollectiveStart custom call.
    fused_async = name in started or name.startswith("async_collective_fusion") or any(
        'custom_call_target="AsyncCollectiveStart"' in i.rest for i in instructions)
    if any('custom_call_target="AsyncCollectiveDone"' in i.rest for i in instructions):
      continue  # The done half repeats its start's collective.
    for instruction in instructions:
      op = instruction.op.removesuffix("-start")
      if not runs or op not in OPS:
        continue
      groups = replica_groups(instruction.rest, num_devices)
      size = 2 if op == "collective-permute" else len(groups[0])
      payload = _payload(op, instruction, size)
      if op == "all-reduce" and name.startswith("all-reduce-scatter"):
        op = "reduce-scatter"  # The TPU's reduce-scatter fusion: an all-reduce of the full buffer.
      out.append(Collective(op, payload, tuple(map(tuple, groups)),
                            fused_async or instruction.op.endswith("-start"), runs,
                            instruction.name))
  return out


def ring_bytes(op: str, payload: float, group_size: int) -> float:
  """Bytes each device sends for one collective with the ring algorithm on `group_size` devices:
  all-gather and reduce-scatter (n-1)/n of the full buffer, all-reduce twice that (reduce-scatter
  then all-gather), all-to-all (n-1)/n of its buffer (a lower bound: hops beyond the neighbour are
  not charged), collective-permute its buffer once."""
  n = group_size
  if op == "collective-permute":
    return payload
  if n <= 1:
    return 0.0
  return payload * (n - 1) / n * (2 if op == "all-reduce" else 1)


@dataclasses.dataclass(frozen=True)
class Interconnect:
  """A slice's ICI: chip coordinates (device.coords), torus shape, one-way bytes/s of one link."""

  coords: tuple[tuple[int, ...], ...]  # Per logical device id: the chip's torus coordinates.
  shape: tuple[int, ...]  # Chips along each torus axis.
  wraparound: tuple[bool, ...]  # Per axis: the slice closes the ring (a torus along it).
  link_bytes_per_s: float  # One direction of one link.

  def axes(self, group: Sequence[int]) -> tuple[int, ...]:
    """The torus axes along which the chips of `group` differ."""
    points = np.asarray([self.coords[d] for d in group])[:, :len(self.shape)]
    return tuple(int(a) for a in np.nonzero(points.max(0) != points.min(0))[0])

  def bandwidth(self, axes: Sequence[int]) -> float:
    """Bytes/s a device can send in a ring over `axes`: both directions of its links along each axis
    where the ring closes (wraparound), one direction where it is a line."""
    return sum(self.link_bytes_per_s * (2 if self.wraparound[a] else 1) for a in axes)


def seconds(collective: Collective, ici: Interconnect) -> float:
  """One execution: ring bytes over the bandwidth of the spanned axes (slowest group); a
  collective-permute crosses one link one way."""
  if collective.op == "collective-permute":
    spans = [ici.axes(pair) for pair in collective.groups if len(pair) == 2 and pair[0] != pair[1]]
    return collective.payload_bytes / ici.link_bytes_per_s if any(spans) else 0.0
  worst = 0.0
  for group in set(collective.groups):
    axes = ici.axes(group)
    if axes:
      worst = max(worst, ring_bytes(collective.op, collective.payload_bytes, len(group))
                  / ici.bandwidth(axes))
  return worst


def communication_seconds(items: Sequence[Collective], ici: Interconnect) -> dict[str, float]:
  """ICI seconds per step: {"async": overlappable, "sync": on the critical path, "bytes": ring
  bytes per device}, every collective times its runs."""
  out = {"async": 0.0, "sync": 0.0, "bytes": 0.0}
  for c in items:
    out["async" if c.is_async else "sync"] += seconds(c, ici) * c.runs
    out["bytes"] += ring_bytes(c.op, c.payload_bytes, len(c.groups[0])) * c.runs
  return out
