"""Java helpers for the Lucene retrievers, shipped compiled: each ``.class``
sits beside its source, and this folder is on the JVM's classpath
(lucene_runtime.ensure_lucene). Rebuild with ``python -m ragline.retrievers.java.build``."""
