"""Ahead-of-time fit checks: slice names, and the real train step compiled for a TPU topology."""

import sys

import pytest

from experiments import flamingo as presets
from flamingo_jax.config import Config
from flamingo_jax.training import aot
from flamingo_jax.training.setup import build_setup
from launch import aot_check


@pytest.mark.parametrize("name, generation, shape", [
    ("v5p-256", "v5p", (4, 4, 8)),  # 256 TensorCores = 128 chips.
    ("v5p:4x4x8", "v5p", (4, 4, 8)),
    ("v4-8", "v4", (2, 2, 1)),
    ("v4-32", "v4", (2, 2, 4)),
    ("v5litepod-16", "v5e", (4, 4)),  # v5e counts chips.
    ("v5e-8", "v5e", (2, 4)),
    ("v5e:2x2", "v5e", (2, 2)),
    ("v6e-256", "v6e", (16, 16)),
    ("V6E-1", "v6e", (1, 1)),
])
def test_slice_names_map_to_topologies(name, generation, shape):
  topology = aot.parse_topology(name)
  assert (topology.chip.generation, topology.shape) == (generation, shape)
  assert topology.name == f"{generation}:{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("name, message", [
    ("v5p-7", "counts TensorCores"),
    ("v5p-24", "power of two"),
    ("v5e:2x2x2", "2 axes"),
    ("v7x-8", "Cloud TPU name"),
])
def test_bad_slice_names_are_rejected_with_the_form_to_use(name, message):
  with pytest.raises(ValueError, match=message):
    aot.parse_topology(name)


def _tiny(**overrides):
  return Config.from_dict(presets.get_config("tiny")).replace(overrides)


def test_tiny_compiles_for_v5e_2x2_and_reports_positive_numbers():
  config = _tiny(**{"mesh.fsdp": 2})
  report = aot.fit_report(config, aot.parse_topology("v5e:2x2"))
  assert report["device_kind"].startswith("TPU v5")
  assert report["chips"] == 4 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  for key in ("frozen_params_gib", "trainable_params_gib", "optimizer_state_gib", "batch_gib",
              "temporaries_gib", "total_gib", "model_flops_per_step", "compile_s", "compile_cpu_s"):
    assert report[key] > 0, key
  # Adam keeps two moments of the float32 trainable tree: twice its bytes (fsdp-sharded alike).
  assert report["optimizer_state_gib"] == pytest.approx(2 * report["trainable_params_gib"],
                                                        rel=0.05)
  assert report["total_gib"] > report["temporaries_gib"]
  assert report["fits"] and report["overflow_gib"] == 0 and report["hbm_gib"] == 16
  assert report["frozen_policy"] == "fsdp" and report["remat_policy"] == "none"
  text = aot.format_report(report)
  assert "fits" in text and "v5e:2x2" in text and "frozen fsdp" in text


def test_huge_batch_on_one_chip_is_reported_as_not_fitting_with_the_overflow():
  config = _tiny(**{"data.datasets.interleaved.batch_size": 2 ** 15,
                    "data.datasets.interleaved.seq_len": 512})
  del config.data.datasets["pairs"], config.data.datasets["video"]
  report = aot.fit_report(config, aot.parse_topology("v5e:1x1"))
  assert not report["fits"]
  assert report["total_gib"] > 16
  assert report["overflow_gib"] == pytest.approx(report["total_gib"] - 16)
  assert "DOES NOT FIT (over by" in aot.format_report(report)


def test_without_libtpu_the_error_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` raises ImportError.
  with pytest.raises(RuntimeError, match=r"pip install 'libtpu=="):
    aot.topology_devices(aot.parse_topology("v5e:2x2"))


def test_gpu_target_says_jax_cannot_compile_for_it_without_one():
  with pytest.raises(RuntimeError, match="cannot compile ahead of time for a GPU"):
    aot_check.check(_tiny(), "h100")


def test_both_forms_of_the_tpu_compilers_out_of_hbm_error_are_read():
  assert aot._parse_oom("Ran out of memory in memory space hbm. Used 30.5G of 15.75G hbm. "
                        "Exceeded hbm capacity by 14.75G.") == ("total", 30.5 * 2**30, 15.75 * 2**30)
  assert aot._parse_oom("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                        "for HLO temporaries (1.5T) exceeds available HBM (15.75G).") == (
                            "temporaries", 1.5 * 2**40, 15.75 * 2**30)
  assert aot._parse_oom("INVALID_ARGUMENT: something else") is None


def test_a_batch_the_mesh_cannot_split_is_rejected_naming_the_fields():
  # build_setup (8 CPU devices: data=8) checks it before anything is compiled.
  with pytest.raises(ValueError, match=r"data.datasets.video.batch_size=6.* mesh.data x mesh.fsdp"):
    build_setup(_tiny(**{"data.datasets.video.batch_size": 6}))


def test_the_fit_check_compiles_only_the_datasets_the_trainer_reads():
  config = _tiny(**{"data.exclude": "video"})
  setup = build_setup(config)
  batches = aot.abstract_batches(config, setup.batch_sharding)
  assert set(batches) == set(config.data.datasets) - {"video"}
  pairs = config.data.datasets["pairs"]
  assert batches["pairs"]["tokens"].shape == (pairs.batch_size, pairs.seq_len)
