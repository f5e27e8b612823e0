"""Adapter merging: LoRA / QLoRA / multi-adapter (linear, TIES, DARE, cat), verified."""
