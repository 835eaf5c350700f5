"""Fully sharded data parallel (FSDP2) for full fine-tuning, through Lightning's ModelParallelStrategy.

``torch.distributed.fsdp.fully_shard`` (FSDP2) shards each parameter across
the data-parallel ranks and gathers a module's parameters just before it
runs. Sharding each block of the network on its own keeps only one block
gathered at a time; the rest of the model (condition encoder, codec, the
network's stem and head) is sharded as one unit. It runs over NCCL on GPUs
and over gloo on CPUs, where the tests check it.
"""

from __future__ import annotations

from torch import nn

#: Attributes of a diffusers UNet or transformer holding its repeated blocks.
BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks")


def shard_denoiser(denoiser: nn.Module, mesh) -> None:
    """Apply FSDP2 to ``denoiser`` in place: each block of its network, its mid block, then the whole."""
    from torch.distributed.fsdp import fully_shard

    net = denoiser.net
    for name in BLOCK_LISTS:
        for block in getattr(net, name, None) or []:
            fully_shard(block, mesh=mesh)
    if getattr(net, "mid_block", None) is not None:
        fully_shard(net.mid_block, mesh=mesh)
    fully_shard(denoiser, mesh=mesh)
