"""File names of every saved folder adaptune writes or reads, in one place."""

# adaptune's adapter folder (formats.native)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
HEAD_FILE = "head.safetensors"
# written beside a saved adapter / fusion / model by `adaptune train`: task, labels, model, max_length
TASK_FILE = "task.json"
# adaptune's fusion folder (formats.fusion)
FUSION_CONFIG = "fusion_config.json"
FUSION_WEIGHTS = "fusion.safetensors"
# AdapterHub `adapters` folders (formats.adapterhub)
HUB_CONFIG = "adapter_config.json"
HUB_HEAD_CONFIG = "head_config.json"
HUB_SETUP = "adapter_setup.json"
HUB_FUSION_CONFIG = "adapter_fusion_config.json"
# peft folders (formats.peft)
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
