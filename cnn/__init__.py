"""Log-mel CNN classifying clips into the 19 situations."""
