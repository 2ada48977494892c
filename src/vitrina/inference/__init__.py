"""inference stage of the vitrina pipeline."""
