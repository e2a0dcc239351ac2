"""AdapterHub ``adapters`` interop: read its adapter, head, fusion and setup folders; write adapters it reads.

``adapter`` maps single adapters and heads (bottlenecks via ``bn_config``; ``lora``, ``compacter`` and ``prefix`` for
LoRA / (IA)³, Compacter and prefix tuning), ``fusion`` reads fusion layers and setups, ``export`` writes
adaptune adapters in AdapterHub's format. Formulas: ``tests/fixtures/adapterhub/README.md``.
"""

from .adapter import is_adapterhub_folder, load_adapterhub, load_adapterhub_head, to_adaptune_config
from .export import save_adapterhub
from .fusion import is_adapterhub_fusion_folder, load_adapterhub_fusion, load_adapterhub_setup

__all__ = [
    "is_adapterhub_folder",
    "is_adapterhub_fusion_folder",
    "load_adapterhub",
    "load_adapterhub_fusion",
    "load_adapterhub_head",
    "load_adapterhub_setup",
    "save_adapterhub",
    "to_adaptune_config",
]
