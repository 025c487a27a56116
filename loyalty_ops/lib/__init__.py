"""Pure Python building blocks with no Dagster import: commands, pipelines, plans and checks.

The Dagster glue in ``loyalty_ops.defs`` is a thin layer over these modules, so they can be tested
(and reused from a shell) without an orchestrator.
"""
