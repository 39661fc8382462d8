"""CutPaste multi-scale anomaly detector trained on normal audio only."""
