"""The engine: data types, stages and pipelines, configuration, corpus readers,
the document store, index layout, model loading and the command line."""
