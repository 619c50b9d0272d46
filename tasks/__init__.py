"""Prefect tasks: thin shells where Ray, MLflow and DVC meet the pure code in models/, data/ and genzoo/."""
