"""`train_hf.py` under `configs/accelerate_fsdp.yaml` on CPU processes (run by `accelerate launch`, see
`tests/test_train_recipes.py`).

accelerate sets up FSDP only on accelerators: with CPU processes it picks gloo DDP (`MULTI_CPU`) even under an FSDP
config. This runner turns that state into FSDP, with the plugin accelerate built from the config, and then runs
`train_hf.py` unchanged, so the config's sharding, ignored modules, state-dict type and the trainer's FSDP code
paths run on gloo CPU processes. After training it prints how the parameters were laid out, for the test to check.

Usage: `accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 tests/fsdp_cpu_train.py ARGS`
"""

import sys

import accelerate.state
from accelerate.state import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # Both shared states: every later `AcceleratorState()` copies `distributed_type` from `PartialState`.
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

import train_hf  # noqa: E402  (after the patch: the trainer's accelerator must see it)

_train = train_hf.Video2LoRATrainer.train


def _train_and_report(self, *args, **kwargs):
    result = _train(self, *args, **kwargs)
    from torch.distributed.tensor import DTensor

    model = self.accelerator.unwrap_model(self.model)
    hypernetwork = list(model.hypernetwork.parameters())
    sharded = sum(isinstance(p, DTensor) for p in hypernetwork)
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in hypernetwork)
    plain_base = all(not isinstance(p, DTensor) for p in model.vlm.parameters())
    print(f"fsdp rank {self.args.process_index}: {self.accelerator.distributed_type.value}, {sharded} of "
          f"{len(hypernetwork)} hypernetwork parameters sharded, {local} of "
          f"{sum(p.numel() for p in hypernetwork)} elements local, base plain: {plain_base}", flush=True)
    return result


train_hf.Video2LoRATrainer.train = _train_and_report

if __name__ == "__main__":
    sys.argv = ["train_hf.py", *sys.argv[1:]]
    sys.exit(train_hf._run_from_command_line())
