"""Losses, data and training loops. Importing this package imports torch."""
