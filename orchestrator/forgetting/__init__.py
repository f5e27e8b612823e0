"""Source-task evaluation of catastrophic forgetting: exact match, baselines, deltas, gates, reports."""
