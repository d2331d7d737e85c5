"""Running models over a catalogue: the resumable read → encode → write runner (``runner``), the frozen-trunk
cache shared by training and indexing (``trunk_cache``), and whole-catalogue embedding (``catalogue``)."""
