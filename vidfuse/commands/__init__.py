"""Subcommands of ``vidfuse``: each module exposes ``register(subparsers, name, help)``.

``register`` adds the command's parser and sets ``func`` (args -> exit code) as default.
"""
