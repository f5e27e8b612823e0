"""The per-worker training loop, the driver that runs it on Ray, and their metrics."""
