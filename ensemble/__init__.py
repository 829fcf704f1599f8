"""ensemble: many fine-tuned LoRA voters from one base LLM, combined by voting."""
from __future__ import annotations

__version__ = "0.1.0"
