"""The shared core: labels, audio, data. It imports nothing else of this project."""
