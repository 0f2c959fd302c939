"""The command line: assembles the layers; the only place that picks backends."""
