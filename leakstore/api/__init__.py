"""The in-process Python API, above the stages and below the pipelines: `Predictor` (a model and the
featurizer it was trained with: one row per input) and `Attributor`, the facade `from leakstore import
Attributor` returns. The dask jobs, reports and studies of `leakstore.pipelines` are built on it."""
