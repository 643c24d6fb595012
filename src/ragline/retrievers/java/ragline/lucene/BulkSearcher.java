package ragline.lucene;

import io.anserini.search.SimpleSearcher;
import io.anserini.search.query.BagOfWordsQueryGenerator;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.FieldDoc;
import org.apache.lucene.search.Query;
import org.apache.lucene.search.ScoreDoc;
import org.apache.lucene.search.Sort;
import org.apache.lucene.search.SortField;
import org.apache.lucene.search.TermInSetQuery;
import org.apache.lucene.util.BytesRef;

/**
 * Anserini's BM25 search for a batch of queries, with the hits handed back to Python as a few
 * flat arrays instead of one Java object per hit (which pyjnius converts one attribute access at
 * a time, most of a 1000-deep batch).
 *
 * <p>The query is Anserini's ({@code BagOfWordsQueryGenerator} over the {@code contents} field,
 * with the searcher's analyzer), and so are the ranking and the scores: this repeats what
 * {@code SimpleSearcher._search} does for plain BM25 (no RM3 or Rocchio, which ragline never
 * sets) on an index written by Lucene 9 or later: sort by score then by collection id, round
 * scores to four decimals, and lower each tied score by 1e-6 per place it is behind the first of
 * its tie (Anserini's {@code ScoreTiesAdjusterReranker}). What it leaves out is reading every
 * hit's stored document: the ids come from the sort's own values, and that document loading is
 * most of Anserini's search time at depth 1000. tests/test_bm25_bulk.py holds the two equal.
 *
 * <p>Anserini's classes are Java 21 bytecode; this file is built with {@code --release 17}
 * against stubs of the few Anserini signatures it uses (see build.py) and links to the real
 * classes when the JVM loads it.
 */
public final class BulkSearcher extends SimpleSearcher {
  /** Anserini's names for the collection id and the analyzed text fields. */
  private static final String ID_FIELD = "id";
  private static final String CONTENTS_FIELD = "contents";
  /** Anserini's {@code BREAK_SCORE_TIES_BY_DOCID}: equal scores are ordered by collection id. */
  private static final Sort SCORE_THEN_ID =
      new Sort(SortField.FIELD_SCORE, new SortField(ID_FIELD, SortField.Type.STRING_VAL));

  public BulkSearcher(String indexDir, float k1, float b) throws Exception {
    super(indexDir);
    try {
      if (backwardsCompatibilityLucene8) {
        // Anserini breaks no ties on such an index and reads ids from stored documents.
        throw new IllegalStateException("an index written by Lucene 8 is not supported: " + indexDir);
      }
      set_bm25(k1, b); // also makes the IndexSearcher, now rather than racily on the first searches
      // Every Anserini member this class uses, touched once: an Anserini whose signatures differ
      // from the stubs fails here, where Python can still fall back, not in the middle of a batch.
      search(new String[] {""}, null, 1, 1);
    } catch (Exception | LinkageError e) {
      close(); // the index reader the superclass opened
      throw e;
    }
  }

  /**
   * The top {@code k} hits of every query, searched on up to {@code threads} threads. With a
   * {@code filter} (from {@link #idFilter}), only the documents it matches can be hits: it is a
   * FILTER clause inside Lucene, which scores nothing and so leaves every hit's score as it was.
   */
  public Batch search(String[] queries, Query filter, int k, int threads) throws Exception {
    ScoreDoc[][] hits = new ScoreDoc[queries.length][];
    int workers = Math.max(1, Math.min(threads, queries.length));
    if (workers == 1) {
      for (int q = 0; q < queries.length; q++) {
        hits[q] = topHits(queries[q], filter, k);
      }
      return Batch.of(hits);
    }
    ExecutorService pool = Executors.newFixedThreadPool(workers);
    try {
      List<Future<?>> searches = new ArrayList<>(queries.length);
      for (int q = 0; q < queries.length; q++) {
        final int i = q;
        searches.add(pool.submit(() -> hits[i] = topHits(queries[i], filter, k)));
      }
      for (Future<?> search : searches) {
        search.get(); // rethrows a failed search
      }
    } finally {
      pool.shutdownNow();
    }
    return Batch.of(hits);
  }

  private ScoreDoc[] topHits(String text, Query filter, int k) throws IOException {
    Query query = new BagOfWordsQueryGenerator().buildQuery(CONTENTS_FIELD, get_analyzer(), text);
    if (filter != null) {
      query = new BooleanQuery.Builder()
          .add(query, BooleanClause.Occur.MUST)
          .add(filter, BooleanClause.Occur.FILTER)
          .build();
    }
    return searcher.search(query, k, SCORE_THEN_ID, true).scoreDocs;
  }

  /** Matches the documents whose collection id is one of {@code ids}; made once, used by many batches. */
  public static Query idFilter(String[] ids) {
    List<BytesRef> terms = new ArrayList<>(ids.length);
    for (String id : ids) {
      terms.add(new BytesRef(id));
    }
    return new TermInSetQuery(ID_FIELD, terms);
  }

  /**
   * The hits of a batch, query after query, best first. The ids are concatenated into one string
   * and cut apart by their lengths in code points (how Python indexes a string), so any id
   * survives intact.
   */
  public static final class Batch {
    /** Hits per query. */
    public final int[] counts;
    public final String docids;
    public final int[] docidLengths;
    public final float[] scores;

    private Batch(int[] counts, String docids, int[] docidLengths, float[] scores) {
      this.counts = counts;
      this.docids = docids;
      this.docidLengths = docidLengths;
      this.scores = scores;
    }

    static Batch of(ScoreDoc[][] hits) {
      int total = 0;
      int[] counts = new int[hits.length];
      for (int q = 0; q < hits.length; q++) {
        counts[q] = hits[q].length;
        total += counts[q];
      }
      StringBuilder docids = new StringBuilder(total * 8);
      int[] docidLengths = new int[total];
      float[] scores = new float[total];
      int n = 0;
      for (ScoreDoc[] queryHits : hits) {
        for (int rank = 0; rank < queryHits.length; rank++, n++) {
          String id = ((BytesRef) ((FieldDoc) queryHits[rank]).fields[1]).utf8ToString();
          docids.append(id);
          docidLengths[n] = id.codePointCount(0, id.length());
          scores[n] = queryHits[rank].score;
        }
        adjustTies(scores, n - queryHits.length, n);
      }
      return new Batch(counts, docids.toString(), docidLengths, scores);
    }

    /**
     * Anserini's {@code ScoreTiesAdjusterReranker} on {@code scores[from:to]}, one query's hits:
     * each score rounded to four decimals, and a score within 1e-4 of the one before it lowered
     * by 1e-6 for each place it is behind the first of that run, so that ties stay in id order
     * for tools that sort by score alone. The float and double steps are Anserini's, in order.
     */
    private static void adjustTies(float[] scores, int from, int to) {
      int behind = 0;
      for (int i = from; i < to; i++) {
        scores[i] = (float) (Math.round(scores[i] * 10000.0d) / 10000.0d);
        if (i == from || scores[i - 1] - scores[i] > 1e-4f) {
          behind = 0;
        } else {
          behind++;
          scores[i] -= 1e-6f * behind;
        }
      }
    }
  }
}
