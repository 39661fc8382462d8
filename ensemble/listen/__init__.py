"""Live listening: emergency-ensemble listen."""
