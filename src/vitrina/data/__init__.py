"""data stage of the vitrina pipeline."""
