"""training stage of the vitrina pipeline."""
