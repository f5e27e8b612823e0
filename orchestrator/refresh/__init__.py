"""Scheduled adapter refreshes: cron schedules, the adapter registry and promotion gates."""
