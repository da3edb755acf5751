"""Setting thresholds: the joint optimizer and its guarantee, tuning a fitted circuit, and auditing it in production."""
