"""The shipped accelerate configs parse, say what the README says, and the trainer refuses
DeepSpeed with a message that points to the FSDP config."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from mptune.errors import TrainingError
from mptune.sharding import check_distributed_type, sharding_requested

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@pytest.mark.parametrize("name,kind", [("ddp_cpu", DistributedType.MULTI_GPU), ("ddp_gpu", DistributedType.MULTI_GPU),
                                       ("fsdp", DistributedType.FSDP), ("deepspeed_zero3", DistributedType.DEEPSPEED)])
def test_configs_parse(name, kind):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type == kind and cfg.num_processes >= 2 and cfg.mixed_precision == "no"
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2
    assert (CONFIGS / "README.md").read_text().count(f"{name}.yaml") >= 1


def test_deepspeed_is_refused_clearly():
    with pytest.raises(TrainingError, match="fsdp.yaml"):
        check_distributed_type(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    check_distributed_type(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))


def test_sharding_switches(monkeypatch):
    acc = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU)
    for k in ("MPTUNE_SHARD_BACKBONE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(k, raising=False)
    assert not sharding_requested(acc)
    assert sharding_requested(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding_requested(acc) and not sharding_requested(SimpleNamespace(num_processes=1, distributed_type=None))
