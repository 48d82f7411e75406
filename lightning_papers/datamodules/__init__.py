"""Data families: generators with known ground truth and loaders for the user's own files."""
