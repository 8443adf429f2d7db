"""What every model package shares: checkpoint reading, strict state-dict filling, dtypes, configs, seeding."""
