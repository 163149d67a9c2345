"""turnout inside other trainers: `turnout.integrations.transformers.GuardedTrainer`."""
