"""Reports render typed results (`DiffResult`, `KLResult`, `FisherResult`, `Series`, `Comparison`) as
Markdown and self-contained HTML; they never compute a metric (every number is a registered one,
`dynamics.metrics`, a field of the result, or the join of `probes.comparison`).

Layer: above `dynamics` and `probes`, below the CLI and the demo. Importing a report imports the
dynamics core, and with it torch; it does not import transformers (probe result types are imported
for type hints only, and `probes.comparison` runs no model).
"""
