"""GRASP: unsupervised identification and removal of spurious factors in LoRA fine-tuning.

Importing this package registers the LoRA fine-tuning module and the JSONL datamodule with the CLI; the heavy
dependencies (transformers, peft) are imported only when a model is built.
"""

from lightning_papers.datamodules.jsonl_text import JsonlTextDataModule
from lightning_papers.methods.grasp.module import LoRACausalLM

__all__ = ["JsonlTextDataModule", "LoRACausalLM"]
