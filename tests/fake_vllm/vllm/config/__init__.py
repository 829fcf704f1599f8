"""Fake ``vllm.config``: only ``vllm.config.lora`` is mirrored."""
