"""evaluation stage of the vitrina pipeline."""
