from .checkpointing import AtomicCheckpointHook
from .checks import GATECheckHook, check_data_roots, check_head_channels
from .config import apply_cfg_options, load_tool_config
from .random_state import RandomStateHook

__all__ = ['AtomicCheckpointHook', 'GATECheckHook', 'check_head_channels', 'check_data_roots', 'apply_cfg_options',
           'load_tool_config', 'RandomStateHook']
