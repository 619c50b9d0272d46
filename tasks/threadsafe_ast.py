"""One `ast.parse` at a time in this process.

CPython (seen on 3.11.7) keeps the recursion depth of its AST constructor in state shared by all
threads: when a parse in one thread is interrupted (a garbage collection that runs Python code lets
another thread take the GIL) and another thread parses meanwhile, the first fails with
"SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). A pipeline run has
several threads that parse: the models' Prefect tasks (their training keys digest models/ by syntax
tree), numpy reading an .npy header (`ast.literal_eval`), `inspect.signature` of a builtin in
Prefect. CI saw a model fail that way. `serialize()` wraps the module's `parse`, which all of these
go through (`literal_eval` calls it by its module-global name), with one re-entrant lock.
"""

from __future__ import annotations

import ast
import functools
import threading

_LOCK = threading.RLock()  # re-entrant: a collection inside a parse may run code that parses


def serialize() -> None:
    """Idempotent; a parse costs one uncontended lock more."""
    if getattr(ast.parse, "_genzoo_serialized", False):
        return
    unlocked = ast.parse

    @functools.wraps(unlocked)
    def parse(*args, **kwargs):
        with _LOCK:
            return unlocked(*args, **kwargs)

    parse._genzoo_serialized = True
    ast.parse = parse
