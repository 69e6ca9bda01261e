"""INT8 calibration: activation statistics, calibrators, cached tables (JSON + TensorRT text).

Typical use (one pass over the data serves every calibrator)::

    plan = plan_qdq(model)                      # quantpipe.quantize: which tensors to calibrate
    stats = collect_statistics(model, feeds, plan.calibration_tensors, CollectConfig(threads=2))
    tables = compute_all(stats, [MaxConfig(), EntropyConfig()])
    write_table(run_dir / "calib", make_table(model_sha, config, provenance, tables[config]))
"""

from quantpipe.calibration.cache import (
    CalibrationTable,
    cache_key,
    format_trt_cache,
    import_trt_cache,
    load_table,
    make_table,
    read_table_json,
    table_paths,
    write_table,
)
from quantpipe.calibration.calibrators import (
    CALIBRATORS,
    Calibrator,
    CalibratorConfig,
    EntropyConfig,
    MaxConfig,
    MseConfig,
    PercentileConfig,
    compute_all,
    make_calibrator,
    make_config,
    needs_histogram,
)
from quantpipe.calibration.collect import CollectConfig, collect_statistics
from quantpipe.calibration.histogram import HistogramCollector, TensorHistogram

__all__ = [
    "CALIBRATORS",
    "CalibrationTable",
    "Calibrator",
    "CalibratorConfig",
    "CollectConfig",
    "EntropyConfig",
    "HistogramCollector",
    "MaxConfig",
    "MseConfig",
    "PercentileConfig",
    "TensorHistogram",
    "cache_key",
    "collect_statistics",
    "compute_all",
    "format_trt_cache",
    "import_trt_cache",
    "load_table",
    "make_calibrator",
    "make_config",
    "make_table",
    "needs_histogram",
    "read_table_json",
    "table_paths",
    "write_table",
]
