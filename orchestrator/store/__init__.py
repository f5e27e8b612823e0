"""The SQLite stores, side by side in one file: jobs, the adapter registry and refresh schedules.

They import nothing of the controller or of refresh: those decide, the stores keep records.
"""
