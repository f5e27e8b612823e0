"""What ships with ftctl for the built-in tiny base model, in pure Python: its generated
tasks, its recipe and the demo data (`builtin:demo/<file>`). Nothing here imports torch, so
the data package can generate demo files on first use.
"""
