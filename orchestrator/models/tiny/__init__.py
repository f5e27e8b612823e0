"""The built-in base model ``builtin:tiny-base``: generated tasks, tokenizer, build and demo data.

Import the submodules directly (``tasks``, ``demo_data`` are pure Python; ``tokenizer`` and
``build`` need transformers/torch), so that importing this package stays cheap.
"""
