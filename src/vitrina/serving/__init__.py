"""serving stage of the vitrina pipeline."""
