r"""Text-only LLaMA presets (`task=lm`) that calibrate the TPU estimate against published runs.

  llama2_70b   Llama-2-70B on v5p-512 (256 chips): MaxText measures 65.4% MFU, 692 tokens/s/chip.
  llama31_8b   Llama-3.1-8B on v6e-256: MaxText measures 45.5% MFU.

  python -m launch.aot_check --config experiments/llama.py:llama2_70b --topology v5p-512

Each preset is the trainer's own `task=lm` step at MaxText's settings for that run (`CALIBRATION`
names the source of each): bf16 compute and weights' gradients, FSDP over every chip, one synthetic
dataset of `per_device_batch x chips` rows of `seq_len` tokens (micro-batched where on-device memory
needs it: `Published.micro_batches`). MaxText keeps
float32 master weights and Adam moments, as this trainer does. Where MaxText offloads saved
activations to host memory (the v6e run), the nearest on-device policy is used: the offloaded q/k/v/out
projections are saved, the MLP recomputed (`save_dot_except_mlp_in`).
"""

import dataclasses

import ml_collections

from flamingo_jax.config import Config, DatasetConfig


@dataclasses.dataclass(frozen=True)
class Published:
  """A published MaxText measurement the estimate is calibrated against."""

  topology: str  # Slice, Cloud TPU name.
  chips: int
  per_device_batch: int  # Rows of seq_len tokens per chip per step.
  seq_len: int
  mfu: float  # Model FLOPs utilisation MaxText reports.
  tokens_per_s_per_chip: float | None  # Where published.
  source: str
  micro_batches: int = 1  # train.micro_batches our trainer needs to fit HBM without host offload.


# MaxText's configs for these runs (github.com/AI-Hypercomputer/maxtext):
#  * Llama-2-70B, v5p-512: MaxText/configs/v5p/llama2_70b.sh (remat_policy=save_dot_except_mlpwi,
#    max_target_length=4096, per_device_batch_size=4: "4M token global batch size on 1 x v5p-512";
#    LIBTPU_INIT_ARGS: async all-gather / collective fusion / collective-permute, data-parallel
#    all-reduce opt); MFU 65.4% and 692 tokens/s/chip from MaxText's published v5p results.
#  * Llama-3.1-8B, v6e-256: benchmarks/maxtext_trillium_model_configs.py `llama3_1_8b_8192`
#    (per_device_batch_size=4, max_target_length=8192, ici_fsdp_parallelism=-1, attention=flash,
#    remat_policy=custom offloading decoder_layer_input and q/k/v/out projections to host; XLA flags
#    DENSE_VMEM_LIMIT, LAYOUT_FOR_ALL_REDUCE_SCATTER, DATA_PARALLEL_OVERLAP, CF_FOR_ALL_GATHER,
#    SparseCore all-reduce offload, HOST_OFFLOAD); MFU 45.5% from MaxText's v6e results.
CALIBRATION = {
    "llama2_70b": Published("v5p-512", 256, 4, 4096, 0.654, 692.0,
                            "MaxText MaxText/configs/v5p/llama2_70b.sh"),
    # MaxText offloads each layer's saved activations to host memory; on-device, 4 x 8192 tokens
    # per chip of them (and 128K-vocabulary logits) exceed v6e's 32 GiB: 4 micro-batches of one row.
    "llama31_8b": Published("v6e-256", 256, 4, 8192, 0.455, None,
                            "MaxText benchmarks/maxtext_trillium_model_configs.py llama3_1_8b_8192",
                            micro_batches=4),
}
PRESETS = tuple(CALIBRATION)

# LLaMA shapes (the models' published config.json): vocab, width, layers, heads, kv heads, MLP width,
# rope theta, rope scaling.
_SHAPES = {
    "llama2_70b": dict(vocab_size=32000, width=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                       mlp_dim=28672, rope_theta=10000.0),
    "llama31_8b": dict(vocab_size=128256, width=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                       mlp_dim=14336, rope_theta=500000.0,
                       rope_scaling=dict(kind="llama3", factor=8.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0, original_max_positions=8192)),
}


def get_config(preset: str = "llama31_8b") -> ml_collections.ConfigDict:
  """The `task=lm` config of `preset` (one of PRESETS) at its calibration run's settings."""
  if preset not in CALIBRATION:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
  run = CALIBRATION[preset]
  config = Config().as_config_dict()
  config.preset = preset
  config.task = "lm"
  config.model.lm.update(_SHAPES[preset])
  config.model.execution.update(dict(dtype="bfloat16", remat_policy="save_dot_except_mlp_in"))
  config.mesh.update(dict(data=1, fsdp=run.chips, tensor=1))
  config.train.micro_batches = run.micro_batches
  config.data.datasets = {"text": DatasetConfig(
      batch_size=run.per_device_batch * run.chips, seq_len=run.seq_len, max_images=1,
      num_frames=1).to_dict()}
  return config
