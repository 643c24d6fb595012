package ragline.lucene;

import io.anserini.search.SimpleSearcher;
import io.anserini.search.query.BagOfWordsQueryGenerator;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.lucene.index.IndexReader;
import org.apache.lucene.index.MultiTerms;
import org.apache.lucene.index.Term;
import org.apache.lucene.index.Terms;
import org.apache.lucene.index.TermsEnum;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.CollectionStatistics;
import org.apache.lucene.search.FieldDoc;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.Query;
import org.apache.lucene.search.ScoreDoc;
import org.apache.lucene.search.Sort;
import org.apache.lucene.search.SortField;
import org.apache.lucene.search.TermInSetQuery;
import org.apache.lucene.search.TermStatistics;
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
 * <p>One shard of a sharded index scores with the whole collection's statistics instead of its
 * own ({@link #useGlobalStatistics}, from every shard's {@link #statistics}), the way Elasticsearch's
 * DFS search does: Lucene asks its {@code IndexSearcher} for every term's and the field's
 * statistics, and a searcher that answers with the sums over all shards makes each shard's BM25
 * scores those of one index over the whole collection. Such shards hand back raw scores ({@code
 * anseriniTies} false), and the merge applies Anserini's tie adjustment to the merged list.
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

  /** The searcher that scores: Anserini's, or one answering with the whole collection's statistics. */
  private volatile IndexSearcher scoring;

  public BulkSearcher(String indexDir, float k1, float b) throws Exception {
    super(indexDir);
    try {
      if (backwardsCompatibilityLucene8) {
        // Anserini breaks no ties on such an index and reads ids from stored documents.
        throw new IllegalStateException("an index written by Lucene 8 is not supported: " + indexDir);
      }
      set_bm25(k1, b); // also makes the IndexSearcher, now rather than racily on the first searches
      scoring = searcher;
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
    return search(queries, filter, k, threads, true);
  }

  /** As above; {@code anseriniTies} false leaves the scores raw, for a merge that adjusts them. */
  public Batch search(String[] queries, Query filter, int k, int threads, boolean anseriniTies)
      throws Exception {
    ScoreDoc[][] hits = new ScoreDoc[queries.length][];
    int workers = Math.max(1, Math.min(threads, queries.length));
    if (workers == 1) {
      for (int q = 0; q < queries.length; q++) {
        hits[q] = topHits(queries[q], filter, k);
      }
      return Batch.of(hits, anseriniTies);
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
    return Batch.of(hits, anseriniTies);
  }

  private ScoreDoc[] topHits(String text, Query filter, int k) throws IOException {
    Query query = new BagOfWordsQueryGenerator().buildQuery(CONTENTS_FIELD, get_analyzer(), text);
    if (filter != null) {
      query = new BooleanQuery.Builder()
          .add(query, BooleanClause.Occur.MUST)
          .add(filter, BooleanClause.Occur.FILTER)
          .build();
    }
    return scoring.search(query, k, SCORE_THEN_ID, true).scoreDocs;
  }

  /**
   * This index's statistics of the analyzed text field: every term with its document frequency and
   * total frequency (terms concatenated as in {@link Batch}), and the field's maxDoc, document
   * count, total term count and summed document frequencies.
   */
  public Statistics statistics() throws IOException {
    IndexReader reader = searcher.getIndexReader();
    StringBuilder text = new StringBuilder();
    List<Integer> lengths = new ArrayList<>();
    List<Long> docFreqs = new ArrayList<>();
    List<Long> totalFreqs = new ArrayList<>();
    Terms terms = MultiTerms.getTerms(reader, CONTENTS_FIELD);
    if (terms != null) {
      TermsEnum each = terms.iterator();
      for (BytesRef term = each.next(); term != null; term = each.next()) {
        String word = term.utf8ToString();
        text.append(word);
        lengths.add(word.codePointCount(0, word.length()));
        docFreqs.add((long) each.docFreq());
        totalFreqs.add(each.totalTermFreq());
      }
    }
    CollectionStatistics field = searcher.collectionStatistics(CONTENTS_FIELD);
    long[] collection =
        field == null
            ? new long[] {reader.maxDoc(), 0, 0, 0}
            : new long[] {field.maxDoc(), field.docCount(), field.sumTotalTermFreq(), field.sumDocFreq()};
    return new Statistics(
        text.toString(),
        lengths.stream().mapToInt(Integer::intValue).toArray(),
        docFreqs.stream().mapToLong(Long::longValue).toArray(),
        totalFreqs.stream().mapToLong(Long::longValue).toArray(),
        collection);
  }

  /**
   * Score with these statistics of the whole collection (every shard's {@link #statistics},
   * summed) from now on. {@code collection}: maxDoc, docCount, sumTotalTermFreq, sumDocFreq.
   */
  public void useGlobalStatistics(
      String terms, int[] termLengths, long[] docFreqs, long[] totalFreqs, long[] collection) {
    Map<String, long[]> byTerm = new HashMap<>(termLengths.length * 2);
    int at = 0;
    for (int i = 0; i < termLengths.length; i++) {
      int end = terms.offsetByCodePoints(at, termLengths[i]);
      byTerm.put(terms.substring(at, end), new long[] {docFreqs[i], totalFreqs[i]});
      at = end;
    }
    IndexSearcher global = new GlobalStatisticsSearcher(searcher.getIndexReader(), byTerm, collection);
    global.setSimilarity(searcher.getSimilarity());
    scoring = global;
  }

  /** An {@code IndexSearcher} whose term and field statistics are the whole collection's. */
  private static final class GlobalStatisticsSearcher extends IndexSearcher {
    private final Map<String, long[]> byTerm;
    private final long[] collection;

    GlobalStatisticsSearcher(IndexReader reader, Map<String, long[]> byTerm, long[] collection) {
      super(reader);
      this.byTerm = byTerm;
      this.collection = collection;
    }

    @Override
    public TermStatistics termStatistics(Term term, int docFreq, long totalTermFreq)
        throws IOException {
      long[] global = CONTENTS_FIELD.equals(term.field()) ? byTerm.get(term.text()) : null;
      if (global == null) { // another field, or statistics older than this shard: its own
        return super.termStatistics(term, docFreq, totalTermFreq);
      }
      return new TermStatistics(term.bytes(), global[0], global[1]);
    }

    @Override
    public CollectionStatistics collectionStatistics(String field) throws IOException {
      if (!CONTENTS_FIELD.equals(field) || collection[1] == 0) {
        return super.collectionStatistics(field);
      }
      return new CollectionStatistics(field, collection[0], collection[1], collection[2], collection[3]);
    }
  }

  /** {@link #statistics}'s result: flat arrays, as {@link Batch}'s, so pyjnius converts a few. */
  public static final class Statistics {
    public final String terms;
    public final int[] termLengths;
    public final long[] docFreqs;
    public final long[] totalFreqs;
    /** maxDoc, docCount, sumTotalTermFreq, sumDocFreq. */
    public final long[] collection;

    Statistics(String terms, int[] termLengths, long[] docFreqs, long[] totalFreqs, long[] collection) {
      this.terms = terms;
      this.termLengths = termLengths;
      this.docFreqs = docFreqs;
      this.totalFreqs = totalFreqs;
      this.collection = collection;
    }
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

    static Batch of(ScoreDoc[][] hits, boolean anseriniTies) {
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
        if (anseriniTies) {
          adjustTies(scores, n - queryHits.length, n);
        }
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
