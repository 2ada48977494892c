"""models stage of the vitrina pipeline."""
