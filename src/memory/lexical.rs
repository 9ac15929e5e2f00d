//! Lexical retrieval: an in-memory BM25 inverted index, and reciprocal-rank fusion to merge
//! its ranking with the dense (vector) one.
//!
//! The index is pure data with no persistence: the service rebuilds it from the store at
//! start and keeps it in step on writes and deletes. Documents are identified by an opaque
//! `u64` key chosen by the caller; scope filtering (tenant, namespace, …) stays with the
//! caller through the `admit` closure given to [`LexicalIndex::search`], so this module knows
//! nothing about the store's schema.

use std::collections::{BinaryHeap, HashMap};

/// Maps keyed by document: the scoring loop does a lookup per posting, and SipHash was a
/// fifth of a search's time. foldhash is seeded per process, so keys are not predictable.
type DocMap<V> = foldhash::HashMap<u64, V>;
use foldhash::HashMapExt;

/// English function words that carry no retrieval signal. Kept sorted so membership is a
/// binary search; `s` and `t` catch the fragments that apostrophes leave ("it's", "don't").
const STOPWORDS: &[&str] = &[
    "a", "am", "an", "and", "are", "as", "at", "be", "been", "being", "but", "by", "can", "did", "do", "does", "for",
    "from", "had", "has", "have", "he", "her", "his", "i", "if", "in", "into", "is", "it", "its", "me", "my", "of",
    "on", "or", "our", "s", "she", "so", "t", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "to", "was", "we", "were", "what", "when", "where", "which", "who", "will", "with", "you", "your",
];

/// Splits text into index terms: lowercased, cut at every non-alphanumeric character
/// (Unicode-aware, so "Zürich" stays one word), stopwords dropped, then lightly stemmed
/// by [`stem`] so that e.g. "cats" and "cat" meet on the same term.
pub fn tokenize(text: &str) -> Vec<String> {
    split_words(&text.to_lowercase()).filter(|w| STOPWORDS.binary_search(w).is_err()).map(stem).collect()
}

/// The words of already lowercased text, cut at every non-alphanumeric character,
/// nothing dropped or stemmed: what [`tokenize`] starts from, and what the rules of
/// [`super::supersede`] and [`super::time_hint`] read.
pub fn split_words(lower: &str) -> impl Iterator<Item = &str> {
    lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty())
}

/// Conservative suffix stripping: plural `-s`/`-es`/`-ies`, `-ing` and `-ed`.
///
/// Deliberately much weaker than Porter: a wrong merge makes unrelated memories match,
/// which costs more than a missed one (dense retrieval covers paraphrase anyway). Only
/// purely alphabetic words are touched, so identifiers and numbers ("mp3", "2026s") stay
/// as written. A suffix is stripped only when a plausible stem (≥ 3 letters, with a vowel)
/// remains, which protects short words like "bus", "thing" or "need".
fn stem(word: &str) -> String {
    if !word.chars().all(char::is_alphabetic) {
        return word.to_string();
    }
    let n = word.chars().count();
    // All suffixes are ASCII, so byte slicing at `len - suffix.len()` is on a char boundary.
    let cut = |suffix: &str| &word[..word.len() - suffix.len()];
    if n >= 5 && word.ends_with("ies") {
        // "stories" → "story"; short "ties" falls through to the plain "-s" rule → "tie".
        return format!("{}y", cut("ies"));
    }
    if word.ends_with("sses") {
        return cut("es").to_string();
    }
    if n >= 5 && word.ends_with("es") {
        // "-es" is a plural only after sibilants ("boxes", "matches"); elsewhere ("notes")
        // the "e" belongs to the stem and the plain "-s" rule below applies.
        let base = cut("es");
        if ["s", "x", "z", "ch", "sh"].iter().any(|s| base.ends_with(s)) {
            return base.to_string();
        }
    }
    if n >= 4 && word.ends_with('s') && !["ss", "us", "is"].iter().any(|s| word.ends_with(s)) {
        // "class", "status", "analysis" are singular despite the final "s".
        return cut("s").to_string();
    }
    if n >= 6 && word.ends_with("ing") {
        if let Some(base) = verb_base(cut("ing")) {
            return base;
        }
    }
    if n >= 5 && word.ends_with("ed") && !word.ends_with("eed") {
        // "eed" words ("speed", "feed") are rarely a past tense of anything.
        if let Some(base) = verb_base(cut("ed")) {
            return base;
        }
    }
    word.to_string()
}

/// The stem left after removing `-ing`/`-ed`, or `None` if it is too short or has no vowel
/// (then the suffix was part of the word: "string", "bed"). A doubled final consonant is
/// undone ("running" → "run") except for l/s/z, which English doubles in base forms too
/// ("falling" → "fall").
fn verb_base(base: &str) -> Option<String> {
    let chars: Vec<char> = base.chars().collect();
    let has_vowel = chars.iter().any(|c| "aeiouy".contains(*c));
    if chars.len() < 3 || !has_vowel {
        return None;
    }
    let (last, prev) = (chars[chars.len() - 1], chars[chars.len() - 2]);
    if last == prev && !"aeioulsz".contains(last) {
        return Some(chars[..chars.len() - 1].iter().collect());
    }
    Some(base.to_string())
}

/// BM25 free parameters: `k1` saturates term frequency, `b` sets how strongly long
/// documents are penalised (0 = not at all, 1 = fully proportional to length).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation; the usual 1.2.
    pub k1: f32,
    /// Length normalisation strength; the usual 0.75.
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

/// One document in a term's postings. The document's length rides along so that scoring a
/// posting needs no second lookup.
#[derive(Debug, Clone, Copy)]
struct Posting {
    tf: u32,
    len: u32,
}

/// What the index remembers about one document, so that removing it can undo exactly
/// what inserting it added to the postings, the document frequencies and the total length.
#[derive(Debug, Clone)]
struct DocEntry {
    /// Number of tokens (after stopword removal): the BM25 document length.
    len: u32,
    /// Distinct terms with their counts.
    terms: Vec<(String, u32)>,
}

/// An inverted index over documents keyed by `u64`, scored with Okapi BM25:
/// idf = ln(1 + (N − df + 0.5)/(df + 0.5)), and for each query term
/// idf · tf·(k1+1) / (tf + k1·(1 − b + b·dl/avgdl)).
///
/// All statistics (N, df, avgdl) are kept exact under insert, replace and remove, so the
/// scores equal those of an index built from scratch over the same documents.
#[derive(Debug, Clone)]
pub struct LexicalIndex {
    params: Bm25Params,
    /// term → (doc → term frequency and length); the inner map's size is the term's df.
    postings: HashMap<String, DocMap<Posting>>,
    docs: DocMap<DocEntry>,
    /// Sum of all document lengths; an integer so avgdl never drifts across updates.
    total_len: u64,
}

impl LexicalIndex {
    /// An empty index with the given BM25 parameters.
    pub fn new(params: Bm25Params) -> Self {
        LexicalIndex { params, postings: HashMap::new(), docs: DocMap::new(), total_len: 0 }
    }

    /// Indexes `text` under `doc`, replacing any previous text for that key. A document
    /// with no terms still counts towards N and avgdl, as it would in a fresh build.
    pub fn insert(&mut self, doc: u64, text: &str) {
        self.remove(doc);
        let tokens = tokenize(text);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for t in &tokens {
            *counts.entry(t.clone()).or_insert(0) += 1;
        }
        let len = tokens.len() as u32;
        for (term, &tf) in &counts {
            self.postings.entry(term.clone()).or_default().insert(doc, Posting { tf, len });
        }
        self.total_len += u64::from(len);
        self.docs.insert(doc, DocEntry { len, terms: counts.into_iter().collect() });
    }

    /// Removes `doc`; returns whether it was present. Terms left with no postings are
    /// dropped so the vocabulary does not grow without bound under churn.
    pub fn remove(&mut self, doc: u64) -> bool {
        let Some(entry) = self.docs.remove(&doc) else {
            return false;
        };
        for (term, _) in &entry.terms {
            if let Some(list) = self.postings.get_mut(term) {
                list.remove(&doc);
                if list.is_empty() {
                    self.postings.remove(term);
                }
            }
        }
        self.total_len -= u64::from(entry.len);
        true
    }

    /// Number of indexed documents (N).
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Whether `doc` is indexed.
    pub fn contains(&self, doc: u64) -> bool {
        self.docs.contains_key(&doc)
    }

    /// The `k` best documents for `query` by BM25 among those `admit` accepts, best first,
    /// with their scores. Only documents sharing at least one term with the query are
    /// returned. Ties are broken by ascending key so results are deterministic.
    ///
    /// Each distinct query term counts once: after stemming, "cat cats" should not weigh
    /// "cat" double. `admit` runs after scoring, on matching documents best first until `k`
    /// are admitted, so `k` admitted results come back whenever that many exist.
    pub fn search(&self, query: &str, k: usize, admit: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        if k == 0 || self.docs.is_empty() {
            return Vec::new();
        }
        let avgdl = self.avgdl();
        let terms = self.query_terms(query);
        let mut scores: DocMap<f64> =
            DocMap::with_capacity(terms.iter().map(|(list, _)| list.len()).max().unwrap_or(0));
        for (list, idf) in terms {
            for (&doc, &posting) in list {
                *scores.entry(doc).or_insert(0.0) += self.term_score(idf, posting, avgdl);
            }
        }
        // Best first, asking `admit` only until k are admitted: with common words the
        // matches run to tens of thousands, and heapifying them is linear where filtering
        // them all first was a lookup each.
        let mut ranked: BinaryHeap<Ranked> = scores.into_iter().map(|(doc, score)| Ranked { score, doc }).collect();
        let mut hits = Vec::with_capacity(k.min(ranked.len()));
        while hits.len() < k {
            let Some(Ranked { score, doc }) = ranked.pop() else { break };
            if admit(doc) {
                hits.push((doc, score as f32));
            }
        }
        hits
    }

    /// The BM25 score of `query` for each of `docs` that is indexed (0 when it shares no
    /// term with the query), in the order given. Hybrid search uses it to give the dense
    /// side's finds the lexical score they would have had, instead of none.
    pub fn score(&self, query: &str, docs: &[u64]) -> Vec<(u64, f32)> {
        let (terms, avgdl) = (self.query_terms(query), self.avgdl());
        docs.iter()
            .filter(|d| self.docs.contains_key(d))
            .map(|&doc| {
                let s: f64 = terms
                    .iter()
                    .filter_map(|(list, idf)| list.get(&doc).map(|&posting| self.term_score(*idf, posting, avgdl)))
                    .sum();
                (doc, s as f32)
            })
            .collect()
    }

    /// What a document holding every query term once, at average length, would score:
    /// the sum of the idf of the query's distinct terms, a term the index lacks counting
    /// at its rarest (df 0). Dividing BM25 by it gives an absolute 0..~1 coverage of the
    /// query's information — matching only common words (a speaker's name) stays low,
    /// and so does everything when most of the query's words occur nowhere (a
    /// paraphrase, which dense retrieval should carry) — where dividing by the best
    /// score of the query would make any best match 1.
    pub fn query_weight(&self, query: &str) -> f32 {
        distinct_terms(query).iter().map(|t| self.idf(self.postings.get(t).map_or(0, |list| list.len()))).sum::<f64>()
            as f32
    }

    /// The query's distinct terms that occur in the index, each with its postings and idf.
    fn query_terms(&self, query: &str) -> Vec<(&DocMap<Posting>, f64)> {
        distinct_terms(query)
            .iter()
            .filter_map(|t| self.postings.get(t))
            .map(|list| (list, self.idf(list.len())))
            .collect()
    }

    /// idf = ln(1 + (N − df + 0.5)/(df + 0.5)); f64, so that sums over many terms compare
    /// equal across rebuilt indexes.
    fn idf(&self, df: usize) -> f64 {
        let (n, df) = (self.docs.len() as f64, df as f64);
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// The average document length (0 for an empty index). Computed once per query: the
    /// scoring loop runs once per posting.
    fn avgdl(&self) -> f64 {
        if self.docs.is_empty() {
            0.0
        } else {
            self.total_len as f64 / self.docs.len() as f64
        }
    }

    /// One term's BM25 contribution to the document of `posting`.
    fn term_score(&self, idf: f64, posting: Posting, avgdl: f64) -> f64 {
        let (k1, b) = (f64::from(self.params.k1), f64::from(self.params.b));
        // avgdl > 0 here: a posting exists, so some document has a token.
        let (tf, dl) = (f64::from(posting.tf), f64::from(posting.len));
        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl / avgdl))
    }
}

/// A scored document ordered for a max-heap: higher score first, then the lower key, so
/// that results are deterministic.
struct Ranked {
    score: f64,
    doc: u64,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then(other.doc.cmp(&self.doc))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// A query's terms, each once: after stemming, "cat cats" should not weigh "cat" double.
fn distinct_terms(query: &str) -> Vec<String> {
    let mut terms = tokenize(query);
    terms.sort_unstable();
    terms.dedup();
    terms
}

/// One BM25 index per tenant. Corpus statistics (N, df, avgdl) — and so every score a
/// tenant sees, raw BM25 in lexical mode included — depend on that tenant's memories
/// alone: no tenant can learn from its scores how often a word occurs in another's.
#[derive(Debug, Default)]
pub struct TenantLexicon {
    by_tenant: HashMap<std::sync::Arc<str>, LexicalIndex>,
    /// Which tenant each document belongs to, so that removal needs only its key.
    tenant_of: HashMap<u64, std::sync::Arc<str>>,
}

impl TenantLexicon {
    /// Indexes `text` under `doc` in `tenant`'s index, replacing any previous text.
    pub fn insert(&mut self, tenant: &str, doc: u64, text: &str) {
        self.remove(doc);
        let tenant: std::sync::Arc<str> = match self.by_tenant.get_key_value(tenant) {
            Some((key, _)) => key.clone(),
            None => tenant.into(),
        };
        self.by_tenant.entry(tenant.clone()).or_default().insert(doc, text);
        self.tenant_of.insert(doc, tenant);
    }

    /// Removes `doc` from whichever tenant holds it; an index left empty goes too.
    pub fn remove(&mut self, doc: u64) -> bool {
        let Some(tenant) = self.tenant_of.remove(&doc) else { return false };
        if let Some(index) = self.by_tenant.get_mut(&tenant) {
            index.remove(doc);
            if index.is_empty() {
                self.by_tenant.remove(&tenant);
            }
        }
        true
    }

    /// The tenant's index; `None` when it has no documents.
    pub fn tenant(&self, tenant: &str) -> Option<&LexicalIndex> {
        self.by_tenant.get(tenant)
    }

    /// Documents over all tenants.
    pub fn len(&self) -> usize {
        self.tenant_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenant_of.is_empty()
    }
}

impl Default for LexicalIndex {
    fn default() -> Self {
        LexicalIndex::new(Bm25Params::default())
    }
}

/// Reciprocal-rank fusion: each list (best first) contributes `weight / (k0 + rank)` to
/// every document it holds, with rank counted from 1. Returns all documents, best first,
/// ties by ascending key.
///
/// Fusing ranks rather than scores is what lets BM25 and cosine similarity, whose scales
/// have nothing in common, be combined without calibration; `k0` (60 is customary) damps
/// the advantage of the very top ranks. A document repeated within one list counts only
/// at its first (best) position.
pub fn reciprocal_rank_fusion(lists: &[(&[u64], f32)], k0: f32) -> Vec<(u64, f32)> {
    let mut fused: HashMap<u64, f64> = HashMap::new();
    for &(list, weight) in lists {
        let mut seen = std::collections::HashSet::new();
        for (i, &doc) in list.iter().enumerate() {
            if seen.insert(doc) {
                let rank = (i + 1) as f64;
                *fused.entry(doc).or_insert(0.0) += f64::from(weight) / (f64::from(k0) + rank);
            }
        }
    }
    let mut out: Vec<(u64, f64)> = fused.into_iter().collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.into_iter().map(|(doc, s)| (doc, s as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_scores_against_its_own_corpus_only() {
        let mut lex = TenantLexicon::default();
        lex.insert("a", 1, "zebra crossing at the corner");
        lex.insert("a", 2, "coffee at noon");
        let alone = lex.tenant("a").unwrap().search("zebra", 5, &|_| true);
        // Another tenant full of "zebra" must not change tenant a's scores at all.
        for doc in 100..200 {
            lex.insert("b", doc, "zebra zebra stripes");
        }
        assert_eq!(lex.tenant("a").unwrap().search("zebra", 5, &|_| true), alone);
        assert_eq!(lex.tenant("a").unwrap().len(), 2);
        // Removal needs only the key, and an emptied tenant disappears.
        for doc in 100..200 {
            assert!(lex.remove(doc));
        }
        assert!(lex.tenant("b").is_none());
        assert!(!lex.remove(100));
        // Re-inserting a key under another tenant moves it.
        lex.insert("b", 1, "zebra");
        assert!(!lex.tenant("a").unwrap().contains(1));
        assert_eq!(lex.len(), 2);
    }

    fn admit_all(_: u64) -> bool {
        true
    }

    /// One BM25 term contribution written straight from the formula, independent of the
    /// index code, so the tests check the implementation against the definition.
    fn bm25_term(tf: f64, df: f64, n: f64, dl: f64, avgdl: f64) -> f64 {
        let (k1, b) = (1.2, 0.75);
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl / avgdl))
    }

    fn toy() -> LexicalIndex {
        let mut idx = LexicalIndex::default();
        idx.insert(1, "cat sat mat"); // dl 3
        idx.insert(2, "dog sat log"); // dl 3
        idx.insert(3, "cat cat dog bark loud"); // dl 5
        idx
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-5
    }

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn exact_bm25_scores_on_toy_corpus() {
        let idx = toy();
        assert_eq!(idx.len(), 3);
        let (n, avgdl) = (3.0, 11.0 / 3.0);

        // Single term "cat": df 2. Doc 1 tf 1 dl 3, doc 3 tf 2 dl 5; doc 2 absent.
        let r = idx.search("cat", 10, &admit_all);
        let s1 = bm25_term(1.0, 2.0, n, 3.0, avgdl);
        let s3 = bm25_term(2.0, 2.0, n, 5.0, avgdl);
        // Worked by hand: idf = ln 1.6 = 0.470004; norm(doc1) = 0.25 + 0.75·9/11 = 0.863636;
        // 2.2 / (1 + 1.2·0.863636) = 1.080357 → 0.507772.
        assert!((s1 - 0.507772).abs() < 1e-5, "{s1}");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 3);
        assert!(close(r[0].1, s3), "{r:?} vs {s3}");
        assert_eq!(r[1].0, 1);
        assert!(close(r[1].1, s1), "{r:?} vs {s1}");

        // Two terms "cat dog" (both df 2) sum per document; "sat" shares doc 2.
        let r = idx.search("Cat, DOG and sat", 10, &admit_all);
        let e1 = bm25_term(1.0, 2.0, n, 3.0, avgdl) + bm25_term(1.0, 2.0, n, 3.0, avgdl);
        let e2 = bm25_term(1.0, 2.0, n, 3.0, avgdl) * 2.0;
        let e3 = bm25_term(2.0, 2.0, n, 5.0, avgdl) + bm25_term(1.0, 2.0, n, 5.0, avgdl);
        let want: HashMap<u64, f64> = [(1, e1), (2, e2), (3, e3)].into_iter().collect();
        assert_eq!(r.len(), 3);
        for (doc, s) in &r {
            assert!(close(*s, want[doc]), "doc {doc}: {s} vs {}", want[doc]);
        }
        assert!(r.windows(2).all(|w| w[0].1 >= w[1].1), "not best first: {r:?}");
        // Docs 1 and 2 tie exactly; the tie goes to the smaller key.
        let pos = |d: u64| r.iter().position(|x| x.0 == d).unwrap();
        assert!(pos(1) < pos(2));

        // Rare term "bark" (df 1) alone.
        let r = idx.search("barking", 10, &admit_all);
        assert_eq!(r.len(), 1);
        assert!(close(r[0].1, bm25_term(1.0, 1.0, n, 5.0, avgdl)));

        // No shared term: nothing.
        assert!(idx.search("zebra", 10, &admit_all).is_empty());
        assert!(idx.search("the and of", 10, &admit_all).is_empty());
        assert!(idx.search("cat", 0, &admit_all).is_empty());
    }

    #[test]
    fn rare_term_outranks_common_terms() {
        let mut idx = LexicalIndex::default();
        idx.insert(1, "meeting notes project meeting notes meeting");
        idx.insert(2, "project zebra");
        for d in 3..10 {
            idx.insert(d, &format!("meeting notes project number {d}"));
        }
        let r = idx.search("project meeting notes zebra", 3, &admit_all);
        assert_eq!(r[0].0, 2, "{r:?}");
        assert_eq!(r[1].0, 1, "{r:?}");
    }

    #[test]
    fn remove_and_replace_match_a_fresh_build() {
        let mut idx = LexicalIndex::default();
        idx.insert(1, "rust borrow checker lifetimes");
        idx.insert(2, "python garbage collector reference counting");
        idx.insert(3, "rust async runtime tokio");
        idx.insert(4, "garbage collection in the jvm");
        assert!(idx.remove(2));
        assert!(!idx.remove(2));
        assert!(!idx.remove(99));
        idx.insert(3, "go garbage collector and goroutines");
        idx.insert(5, "tokio tasks and rust futures");
        assert!(idx.remove(5));

        let mut fresh = LexicalIndex::default();
        fresh.insert(1, "rust borrow checker lifetimes");
        fresh.insert(3, "go garbage collector and goroutines");
        fresh.insert(4, "garbage collection in the jvm");

        assert_eq!(idx.len(), 3);
        assert!(idx.contains(3) && !idx.contains(2) && !idx.contains(5));
        assert_eq!(idx.total_len, fresh.total_len);
        assert_eq!(idx.postings.len(), fresh.postings.len(), "empty postings must be dropped");
        for q in ["rust", "garbage collector", "tokio async", "python counting", "jvm rust go"] {
            assert_eq!(idx.search(q, 10, &admit_all), fresh.search(q, 10, &admit_all), "query {q:?}");
        }
        // The old text of doc 3 is gone.
        assert!(idx.search("tokio async runtime", 10, &admit_all).is_empty());

        // Removing everything leaves an empty, still usable index.
        for d in [1, 3, 4] {
            assert!(idx.remove(d));
        }
        assert!(idx.is_empty() && idx.postings.is_empty() && idx.total_len == 0);
        assert!(idx.search("rust", 5, &admit_all).is_empty());
    }

    #[test]
    fn admit_filter_excludes_but_still_fills_k() {
        let mut idx = LexicalIndex::default();
        // Odd docs mention the term more often, so they would win without the filter.
        for d in 0..10u64 {
            let text = if d % 2 == 1 { "apple apple apple pie" } else { "apple pie crust" };
            idx.insert(d, text);
        }
        let even = |d: u64| d % 2 == 0;
        let unfiltered = idx.search("apple", 3, &admit_all);
        assert!(unfiltered.iter().all(|(d, _)| d % 2 == 1));

        let r = idx.search("apple", 3, &even);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 2, 4]);
        let r = idx.search("apple", 100, &even);
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|(d, _)| d % 2 == 0));
        assert!(idx.search("apple", 3, &|_| false).is_empty());
    }

    #[test]
    fn tokenize_case_punctuation_unicode_stopwords_plurals() {
        assert_eq!(tokenize("Café-Zürich 2026!"), vec!["café", "zürich", "2026"]);
        assert_eq!(tokenize("The cat, and THE dog; it's a Dog."), vec!["cat", "dog", "dog"]);
        assert_eq!(tokenize("ÉCOLE straße Москва 東京"), vec!["école", "straße", "москва", "東京"]);
        assert_eq!(tokenize("cats"), tokenize("cat"));
        assert_eq!(tokenize("Boxes matches stories classes"), vec!["box", "match", "story", "class"]);
        assert_eq!(tokenize("notes running jumped falling"), vec!["note", "run", "jump", "fall"]);
        // Words that only look inflected stay whole.
        assert_eq!(
            tokenize("class status bus thing string need speed bed ties"),
            vec!["class", "status", "bus", "thing", "string", "need", "speed", "bed", "tie"]
        );
        // Identifiers and numbers are not stemmed.
        assert_eq!(tokenize("mp3s v2ed"), vec!["mp3s", "v2ed"]);
        assert!(tokenize("  ... --- !!! ").is_empty());

        // The plural meets its singular through the index as well.
        let mut idx = LexicalIndex::default();
        idx.insert(7, "Two CATS slept.");
        assert_eq!(idx.search("cat", 5, &admit_all).len(), 1);
    }

    #[test]
    fn rrf_hand_computed_with_weights() {
        let dense: &[u64] = &[1, 2, 3];
        let lexical: &[u64] = &[3, 1, 4, 3]; // the repeated 3 must not count twice
        let r = reciprocal_rank_fusion(&[(dense, 1.0), (lexical, 0.5)], 60.0);
        let want = [
            (1u64, 1.0 / 61.0 + 0.5 / 62.0), // 0.024458
            (3, 1.0 / 63.0 + 0.5 / 61.0),    // 0.024070
            (2, 1.0 / 62.0),                 // 0.016129
            (4, 0.5 / 63.0),                 // 0.007937
        ];
        assert_eq!(r.len(), want.len());
        for ((doc, s), (wd, ws)) in r.iter().zip(want) {
            assert_eq!(*doc, wd, "{r:?}");
            assert!(close(*s, ws), "doc {doc}: {s} vs {ws}");
        }

        // A heavier lexical weight flips the top two: 3 now leads.
        let r = reciprocal_rank_fusion(&[(dense, 1.0), (lexical, 3.0)], 60.0);
        assert_eq!((r[0].0, r[1].0), (3, 1));
        assert!(close(r[0].1, 1.0 / 63.0 + 3.0 / 61.0)); // 0.065047
        assert!(close(r[1].1, 1.0 / 61.0 + 3.0 / 62.0)); // 0.064780
        assert!(reciprocal_rank_fusion(&[], 60.0).is_empty());
    }

    #[test]
    fn scoring_chosen_documents_matches_search() {
        let idx = toy();
        let searched = idx.search("cat dog", 10, &admit_all);
        let mut scored = idx.score("cat dog", &[1, 2, 3, 99]);
        // 99 is not indexed and is left out; every other document gets its search score.
        assert_eq!(scored.len(), 3);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(scored, searched);
        // A document sharing no term with the query scores 0 (search would omit it).
        assert_eq!(idx.score("bark", &[1]), vec![(1, 0.0)]);
    }

    #[test]
    fn query_weight_sums_idf_and_counts_unknown_terms_at_df_zero() {
        let idx = toy();
        let n = 3.0;
        let idf = |df: f64| (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        // cat: df 2; zebra: df 0; "cats" repeats cat after stemming and counts once.
        assert!(close(idx.query_weight("cat cats zebra"), idf(2.0) + idf(0.0)));
        // Document 1 holds cat once at length 3 (avgdl 11/3): its coverage of "cat" is
        // below 1 only by the length normalisation.
        let coverage = idx.score("cat", &[1])[0].1 / idx.query_weight("cat");
        let want = bm25_term(1.0, 2.0, n, 3.0, 11.0 / 3.0) / idf(2.0);
        assert!(close(coverage, want) && coverage > 0.9 && coverage < 1.2, "{coverage}");
    }
}
