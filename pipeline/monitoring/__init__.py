"""Monitoring: drift of served traffic against the training reference, reports, and retraining guards.

Modules, one concern each:

- ``reference``: summaries of the reference data (sorted-quantile sketches, category counts, null rates),
  computed once per model version and cached on disk.
- ``reference_stream``: the same reference summaries built from record batches (a split bigger than memory).
- ``window``: the current window summarised batch by batch into the same kind of sketches (bounded memory).
- ``batches``: a window or reference file (CSV, Parquet file / directory / glob, JSONL) read batch by batch.
- ``drift``: the statistics and the per-feature / dataset decisions (pure functions, no I/O).
- ``images``: image columns as per-image statistics (brightness, contrast, size) and as the model's bytes.
- ``request_log``: the serving request log (docs/contracts.md) as a DataFrame; labels joined on request id.
- ``performance``: metrics on a labelled window against the model's evaluation baseline.
- ``report``: HTML report, per-feature plots, and the MLflow monitor run.
- ``guards``: whether a drift result may trigger a retraining (cooldown, daily cap, labels, in-flight).
- ``monitor``: ``run_monitor``, the one entry point the DAG and the CLI call.

Kept import-light: nothing heavy is imported here.
"""
