"""Property-based fuzzing of the file readers and the CLI's inputs (hypothesis)."""
