"""Render Slurm and Kubernetes artifacts for a job (pure functions), and submit them."""
