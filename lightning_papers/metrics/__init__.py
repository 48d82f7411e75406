"""torchmetrics ``Metric``s shared by methods, callbacks and benchmarks."""
