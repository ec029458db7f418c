"""LoRA adapters for GATE's LoRA branches: extraction from fine-tuned models, files, training."""
