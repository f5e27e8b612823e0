"""The built-in base model ``builtin:tiny-base``: its tokenizer and its build.

Import the submodules directly (``tokenizer`` and ``build`` need transformers/torch when
used), so that importing this package stays cheap. Its tasks, recipe and demo data are pure
Python and live in ``orchestrator.builtin``.
"""
