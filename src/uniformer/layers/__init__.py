"""UniFormer building blocks, written once for 2-D and 3-D inputs."""
from .common import ChannelLayerNorm, CheckpointedBlock, avg_pool_nd, batch_norm_nd, check_dims, conv_nd, is_tracing
from .embed import ConvDown, ConvStem, PatchEmbed, dynamic_pos_embed
from .ffn import Mlp
from .hourglass import HourglassBlock, PruneState, initial_prune_state, validate_prune_schedule
from .mhra import Attention, GlobalBlock, LocalBlock

__all__ = [
    "Attention", "ChannelLayerNorm", "CheckpointedBlock", "ConvDown", "ConvStem", "GlobalBlock", "HourglassBlock",
    "LocalBlock", "Mlp", "PatchEmbed", "PruneState", "avg_pool_nd", "batch_norm_nd", "check_dims", "conv_nd",
    "dynamic_pos_embed", "initial_prune_state", "is_tracing", "validate_prune_schedule",
]
