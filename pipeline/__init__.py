"""What every webclip stage shares: configuration, the run directory, the shard runner, the CLI."""
