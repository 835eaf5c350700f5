"""Fully sharded data parallel (FSDP2) for full fine-tuning, through Lightning's ModelParallelStrategy.

``torch.distributed.fsdp.fully_shard`` (FSDP2) shards each parameter across
the data-parallel ranks and gathers a module's parameters just before it
runs. Sharding each block of the network on its own keeps only one block
gathered at a time; the rest of the model (condition encoder, codec, the
network's stem and head) is sharded as one unit. It runs over NCCL on GPUs
and over gloo on CPUs, where the tests check it.

:meth:`prefdiff.trainers.base.AlignmentModule.configure_model` calls
:func:`shard_denoiser` when the Trainer's strategy is ModelParallelStrategy.
"""

from __future__ import annotations

from torch import nn

#: Attributes of a diffusers UNet or transformer holding its repeated blocks.
BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks")
#: The denoiser's methods other than ``forward`` that use the parameters of its outermost unit
#: (the codec's): FSDP2 gathers those parameters for them too.
UNIT_METHODS = ("encode", "decode")


def shard_denoiser(denoiser: nn.Module, mesh) -> None:
    """Apply FSDP2 to ``denoiser`` in place: each block of its network, its mid block, then the whole."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    net = denoiser.net
    for name in BLOCK_LISTS:
        for block in getattr(net, name, None) or []:
            fully_shard(block, mesh=mesh)
    if getattr(net, "mid_block", None) is not None:
        fully_shard(net.mid_block, mesh=mesh)
    fully_shard(denoiser, mesh=mesh)
    for method in UNIT_METHODS:
        register_fsdp_forward_method(denoiser, method)


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 has been applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def gather_full_state(module: nn.Module) -> dict:
    """The whole (unsharded) state dict of a sharded ``module`` on every rank, on the CPU.

    A collective: every rank must call it. Each tensor is gathered and moved to the CPU on its own,
    so the device never holds more than one whole tensor beyond the shards.
    """
    from torch.distributed.tensor import DTensor

    return {name: (value.full_tensor() if isinstance(value, DTensor) else value).cpu()
            for name, value in module.state_dict().items()}
