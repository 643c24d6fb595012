package io.anserini.search.query;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.search.Query;

/** Compile-time stand-in: the method BulkSearcher calls, as in Anserini 1.7.1. */
public class BagOfWordsQueryGenerator {
  public Query buildQuery(String field, Analyzer analyzer, String text) {
    throw new UnsupportedOperationException("stub");
  }
}
