"""Prediction on whole volumes and series. Importing this package imports torch."""
