"""Live mode: real-time emotion rows from a camera or a stream (`emotion-batch live SOURCE --out live.csv`).

The pieces, in data-flow order:

* `sources` - a frame generator over a camera, a stream URL or stdin, decoded with PyAV, that reconnects with
  backoff when the stream drops;
* `capture` - a decoding thread that keeps only the newest frame (`LatestFrame`), and the analysis loop that
  takes the latest one at the sampling rate and turns it into `schema.Row`s (sampling less, never lagging, when
  the machine falls behind);
* `sink` - appends and flushes the rows to CSV as they are made, starting a new file per hour or day on request;
* `view` and `preview` - the terminal table and the loopback preview page, fed from the same rows.
"""
