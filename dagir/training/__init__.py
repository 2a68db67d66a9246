"""Training: the three stages of the method (warm-up, search, fine-tune), their losses and schedules."""
