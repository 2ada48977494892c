"""quality stage of the vitrina pipeline."""
