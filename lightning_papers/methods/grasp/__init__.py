"""GRASP: unsupervised identification and removal of spurious factors in LoRA fine-tuning."""
