"""Prefect tasks: thin shells where Ray, MLflow and DVC meet the pure code in models/, data/ and genzoo/."""

from tasks import threadsafe_ast

threadsafe_ast.serialize()  # tasks run in threads, and CPython's AST constructor is not thread-safe
