"""Whisper encoder with a timestep head, and the decoder as keyword judge (one encoder pass)."""
