"""From a path to frames: finding input files, checking what they really are, decoding and sampling."""
