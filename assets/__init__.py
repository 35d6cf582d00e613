"""The computing of every stage, in plain Python that imports neither Dagster nor
orchestration/ (assets/definitions/ holds the Dagster assets over it)."""
