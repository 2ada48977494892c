"""export stage of the vitrina pipeline."""
