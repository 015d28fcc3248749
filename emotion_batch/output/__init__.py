"""What a run leaves behind: table sinks (CSV/Parquet), charts, progress displays and log set-up."""
