"""Running many files: executors and isolated workers, the incremental run with its state store, shards and lock."""
