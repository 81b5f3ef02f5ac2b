"""Runner integration (the calibration hook lands with the pipeline issue)."""
