"""Networks and their configs. Importing this package imports torch."""
