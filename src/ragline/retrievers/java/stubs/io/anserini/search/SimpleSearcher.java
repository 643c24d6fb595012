package io.anserini.search;

import java.io.IOException;
import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.search.IndexSearcher;

/** Compile-time stand-in: what BulkSearcher uses of Anserini 1.7.1's class, same signatures. */
public class SimpleSearcher {
  protected boolean backwardsCompatibilityLucene8;
  protected IndexSearcher searcher;

  public SimpleSearcher(String indexDir) throws IOException {
    throw new UnsupportedOperationException("stub");
  }

  public Analyzer get_analyzer() {
    throw new UnsupportedOperationException("stub");
  }

  public void set_bm25(float k1, float b) {
    throw new UnsupportedOperationException("stub");
  }

  public void close() throws IOException {
    throw new UnsupportedOperationException("stub");
  }
}
