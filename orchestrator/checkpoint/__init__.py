"""Checkpoints: layout, atomic write + manifest, verification, retention."""
