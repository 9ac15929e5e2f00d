//! Splitting documents into chunks of at most `max_tokens` tokens that follow the
//! document's structure, for embedding and storage in the knowledge base.
//!
//! The document (plain text or Markdown) is read as a sequence of **headings** (lines
//! starting with 1–6 `#`, outside fenced code) and **paragraphs** (runs of lines separated
//! by blank lines). Chunks are then filled greedily, piece by piece, with these rules:
//!
//! - a heading always starts a new chunk, so that every chunk lies under one heading path
//!   (recorded in [`Chunk::heading`], e.g. `"Install > Linux"`) and a section's text is
//!   never retrieved together with its neighbour's;
//! - a heading is never the last thing in a chunk while its body goes to the next: when
//!   the first paragraph does not fit beside it, the paragraph is split so that its first
//!   sentences do (consecutive headings with no text between them stay together too);
//! - a paragraph that fits in a chunk is never split: when it does not fit in the current
//!   chunk, the chunk is closed and the paragraph starts the next one;
//! - a paragraph larger than a chunk is split at sentence ends (`.`, `!`, `?` followed by
//!   whitespace, not after "e.g."-like words nor before a lowercase word; `。！？` anywhere),
//!   a sentence larger than a chunk at whitespace, and a word larger than a chunk (a long
//!   URL with a real tokenizer) between characters as the very last resort;
//! - a chunk that follows another in the same section starts with the last
//!   ~`overlap_tokens` of it, cut at a sentence start when that keeps at least half of the
//!   overlap, else at a word start. The overlap is given up rather than split a paragraph
//!   that would fit without it.
//!
//! Token counts always come from the caller's counter applied to the exact chunk text, so
//! a chunk never exceeds `max_tokens` whatever the tokenizer does at piece joins (the only
//! exception: a single character that alone counts more than `max_tokens`).
//!
//! Each chunk's text is exactly the slice of the input between its character offsets
//! `char_start..char_end` (characters, not bytes), so consecutive chunks' spans overlap
//! where their texts do. Chunks never begin or end with whitespace, and every
//! non-whitespace character of the input is in at least one chunk.

use std::collections::VecDeque;

/// Budget for [`chunk_text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// Most tokens in one chunk (values below 1 are taken as 1).
    pub max_tokens: usize,
    /// About how many tokens a chunk repeats from the end of the previous one in the same
    /// section; 0 for none. Capped at half of `max_tokens` so the new text has room.
    pub overlap_tokens: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self { max_tokens: 200, overlap_tokens: 30 }
    }
}

/// One piece of a document, ready to embed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Position of the chunk in the document, from 0.
    pub index: usize,
    /// The chunk's text: exactly the input's characters `char_start..char_end`.
    pub text: String,
    /// Offset of the first character, in characters (not bytes) from the input's start.
    pub char_start: usize,
    /// Offset just past the last character, in characters.
    pub char_end: usize,
    /// Path of the Markdown headings the chunk lies under, outermost first and joined with
    /// `" > "` (`"Install > Linux"`); `None` before the first heading.
    pub heading: Option<String>,
}

/// Splits `text` into chunks of at most `params.max_tokens` tokens as counted by
/// `count_tokens`, following the structure described in the module documentation.
/// Empty or whitespace-only input gives no chunks.
pub fn chunk_text(text: &str, params: &ChunkParams, count_tokens: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let max = params.max_tokens.max(1);
    let overlap = params.overlap_tokens.min(max / 2);
    let (pieces, sections) = parse(text);
    let mut queue: VecDeque<Piece> = pieces.into();
    // (byte start, byte end, section) of each chunk; offsets are turned into characters
    // in one pass at the end rather than by rescanning the text per chunk.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut open: Option<Open> = None;

    while let Some(piece) = queue.pop_front() {
        let is_heading = piece.kind == Kind::Heading;
        if is_heading {
            if let Some(o) = &open {
                if o.body.is_some() {
                    // A heading starts a section; the overlap from the previous section,
                    // if that is all the open chunk holds, is dropped with it.
                    if o.own {
                        spans.push((o.start, o.end, o.section));
                    }
                    open = None;
                }
            }
        }
        let start = open.as_ref().map_or(piece.start, |o| o.start);
        if count_tokens(&text[start..piece.end]) <= max {
            let o = open.get_or_insert(Open {
                start: piece.start,
                end: piece.end,
                own: true,
                body: None,
                section: piece.section,
            });
            o.end = piece.end;
            o.own = true;
            o.section = piece.section;
            if !is_heading && o.body.is_none() {
                o.body = Some(piece.start);
            }
            continue;
        }
        match open.take() {
            Some(o) if o.own && o.body.is_some() => {
                // Full: close it and retry the piece in a fresh chunk that starts with
                // the overlap.
                spans.push((o.start, o.end, o.section));
                open = overlap_start(text, &o, overlap, count_tokens).map(|s| Open {
                    start: s,
                    end: o.end,
                    own: false,
                    body: Some(s),
                    section: o.section,
                });
                queue.push_front(piece);
            }
            Some(o) if !o.own => {
                // Only overlap so far: give it up to keep the piece whole.
                queue.push_front(piece);
            }
            headings => {
                // Nothing open, or only headings that must keep their body: cut the piece
                // finer so that at least its beginning fits.
                if let Some(subs) = refine(text, &piece) {
                    open = headings;
                    for sub in subs.into_iter().rev() {
                        queue.push_front(sub);
                    }
                } else if let Some(o) = headings {
                    spans.push((o.start, o.end, o.section));
                    queue.push_front(piece);
                } else {
                    // A single character over budget: nothing smaller exists.
                    spans.push((piece.start, piece.end, piece.section));
                }
            }
        }
    }
    if let Some(o) = open {
        if o.own {
            spans.push((o.start, o.end, o.section));
        }
    }

    let mut offsets: Vec<usize> = spans.iter().flat_map(|&(s, e, _)| [s, e]).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let chars = char_offsets(text, &offsets);
    let to_char = |b: usize| chars[offsets.binary_search(&b).expect("offset was collected")];
    spans
        .into_iter()
        .enumerate()
        .map(|(index, (s, e, section))| Chunk {
            index,
            text: text[s..e].to_string(),
            char_start: to_char(s),
            char_end: to_char(e),
            heading: sections[section].clone(),
        })
        .collect()
}

/// How fine a piece is; a piece that does not fit is cut into pieces of the next kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Heading,
    Paragraph,
    Sentence,
    Word,
    Char,
}

/// A span of the input (byte offsets, never starting or ending with whitespace) with the
/// section (index into the heading paths) it belongs to.
#[derive(Clone, Copy, Debug)]
struct Piece {
    start: usize,
    end: usize,
    kind: Kind,
    section: usize,
}

/// The chunk being filled.
#[derive(Clone, Copy, Debug)]
struct Open {
    start: usize,
    end: usize,
    /// Whether it holds a piece of its own, not only the overlap carried from the last chunk.
    own: bool,
    /// Where the text after its leading headings starts (overlap included); `None` while it
    /// holds headings only.
    body: Option<usize>,
    section: usize,
}

/// Reads the document into headings and paragraphs, with the heading path of each section
/// (section 0 is the text before any heading).
fn parse(text: &str) -> (Vec<Piece>, Vec<Option<String>>) {
    let mut pieces = Vec::new();
    let mut sections: Vec<Option<String>> = vec![None];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut paragraph: Option<(usize, usize)> = None;
    let mut in_fence = false;
    let mut pos = 0;
    let close = |paragraph: &mut Option<(usize, usize)>, pieces: &mut Vec<Piece>, section: usize| {
        if let Some((start, end)) = paragraph.take() {
            pieces.push(Piece { start, end, kind: Kind::Paragraph, section });
        }
    };
    for line in text.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        let body = line.trim_end();
        let trimmed = body.trim_start();
        let section = sections.len() - 1;
        if trimmed.is_empty() {
            close(&mut paragraph, &mut pieces, section);
            continue;
        }
        let lead = body.len() - trimmed.len();
        let (start, end) = (line_start + lead, line_start + body.len());
        // Lines in fenced code are never headings: shell and Python comments start with `#`.
        // Indenting by four or more makes a Markdown line code, not a heading, as well.
        let heading = if in_fence || lead > 3 { None } else { heading_line(trimmed) };
        if let Some((level, title)) = heading {
            close(&mut paragraph, &mut pieces, section);
            stack.retain(|(l, _)| *l < level);
            stack.push((level, title));
            let path: Vec<&str> = stack.iter().map(|(_, t)| t.as_str()).filter(|t| !t.is_empty()).collect();
            sections.push((!path.is_empty()).then(|| path.join(" > ")));
            pieces.push(Piece { start, end, kind: Kind::Heading, section: sections.len() - 1 });
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        paragraph = Some((paragraph.map_or(start, |(s, _)| s), end));
    }
    close(&mut paragraph, &mut pieces, sections.len() - 1);
    (pieces, sections)
}

/// The level and title of a Markdown heading line (already trimmed), if it is one.
fn heading_line(line: &str) -> Option<(usize, String)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    let rest = &line[level..];
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let title = rest.trim();
    // An optional closing run of `#` ("## Setup ##") is not part of the title.
    let unclosed = title.trim_end_matches('#');
    let title =
        if unclosed.is_empty() || unclosed.ends_with(char::is_whitespace) { unclosed.trim_end() } else { title };
    Some((level, title.to_string()))
}

/// Cuts a piece that does not fit into finer ones, skipping levels that would leave it
/// whole (a paragraph of one sentence goes straight to words); `None` for a character.
fn refine(text: &str, piece: &Piece) -> Option<Vec<Piece>> {
    let mut kind = piece.kind;
    loop {
        let (spans, next) = match kind {
            Kind::Paragraph => (sentences(text, piece.start, piece.end), Kind::Sentence),
            Kind::Heading | Kind::Sentence => (words(text, piece.start, piece.end), Kind::Word),
            Kind::Word => {
                let chars = text[piece.start..piece.end]
                    .char_indices()
                    .map(|(i, c)| (piece.start + i, piece.start + i + c.len_utf8()))
                    .collect();
                (chars, Kind::Char)
            }
            Kind::Char => return None,
        };
        if spans.len() > 1 {
            return Some(
                spans
                    .into_iter()
                    .map(|(start, end)| Piece { start, end, kind: next, section: piece.section })
                    .collect(),
            );
        }
        kind = next;
    }
}

/// Maximal runs of non-whitespace in `text[a..b]`, as byte spans.
fn words(text: &str, a: usize, b: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text[a..b].char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(a + i),
            (true, Some(s)) => {
                out.push((s, a + i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, b));
    }
    out
}

/// Characters that may follow a sentence's final punctuation and still belong to it.
const CLOSERS: &[char] = &['"', '\'', '”', '’', ')', ']', '»', '」', '』'];

/// Sentences of `text[a..b]` as byte spans without surrounding whitespace. A blank line
/// also ends a sentence, so that a span reaching over paragraphs is cut between them.
fn sentences(text: &str, a: usize, b: usize) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = text[a..b].char_indices().map(|(i, c)| (a + i, c)).collect();
    let byte_at = |i: usize| chars.get(i).map_or(b, |&(at, _)| at);
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut last_end = a;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c.is_whitespace() {
            let run = chars[i..].iter().take_while(|(_, c)| c.is_whitespace());
            let (len, newlines) = run.fold((0, 0), |(n, nl), (_, c)| (n + 1, nl + usize::from(*c == '\n')));
            if newlines >= 2 {
                if let Some(s) = start.take() {
                    out.push((s, last_end));
                }
            }
            i += len;
            continue;
        }
        start.get_or_insert(at);
        last_end = at + c.len_utf8();
        if let Some(next) = sentence_end(&chars, i) {
            last_end = byte_at(next);
            out.push((start.take().expect("set above"), last_end));
            i = next;
            continue;
        }
        i += 1;
    }
    if let Some(s) = start {
        out.push((s, last_end));
    }
    out
}

/// If the character at `i` ends a sentence, the index just past the sentence (after any
/// closing quotes or brackets).
fn sentence_end(chars: &[(usize, char)], i: usize) -> Option<usize> {
    let c = chars[i].1;
    let after_closers = |from: usize| from + chars[from..].iter().take_while(|(_, c)| CLOSERS.contains(c)).count();
    match c {
        // CJK full stops end a sentence with no space after them.
        '。' | '！' | '？' => Some(after_closers(i + 1)),
        '.' | '!' | '?' => {
            let next = after_closers(i + 1);
            if chars.get(next).is_some_and(|(_, c)| !c.is_whitespace()) {
                return None; // "3.14", "...", "a.b"
            }
            // "e.g.", "i.e.", "U.S.": a dot earlier in the same word marks an abbreviation.
            let word_before = chars[..i].iter().rev().take_while(|(_, c)| !c.is_whitespace());
            if c == '.' && word_before.clone().any(|(_, c)| *c == '.') {
                return None;
            }
            // "etc. and so on": a sentence does not start in lowercase.
            let following = chars[next..].iter().find(|(_, c)| !c.is_whitespace());
            if following.is_some_and(|(_, c)| c.is_lowercase()) {
                return None;
            }
            Some(next)
        }
        _ => None,
    }
}

/// Where the chunk after `closed` starts so that it repeats about `overlap` tokens of it:
/// the earliest word start whose tail fits in `overlap`, moved to a sentence start when
/// one follows that keeps at least half of it. `None` when no tail fits or `overlap` is 0.
fn overlap_start(text: &str, closed: &Open, overlap: usize, count_tokens: &dyn Fn(&str) -> usize) -> Option<usize> {
    let body = closed.body?;
    if overlap == 0 {
        return None;
    }
    let end = closed.end;
    // Starting at the chunk's own start would repeat it whole.
    let starts: Vec<usize> = words(text, body, end).into_iter().map(|(s, _)| s).filter(|&s| s > closed.start).collect();
    // Tails only shrink as the start moves right, so the first that fits is found by halving.
    let first = starts.partition_point(|&s| count_tokens(&text[s..end]) > overlap);
    let bound = *starts.get(first)?;
    // The body's first span is not known to begin a sentence (it may begin an overlap).
    let sentence = sentences(text, body, end).into_iter().skip(1).map(|(s, _)| s).find(|&s| s >= bound);
    match sentence {
        Some(s) if 2 * count_tokens(&text[s..end]) >= overlap => Some(s),
        _ => Some(bound),
    }
}

/// Character offsets of the sorted byte offsets `bytes` (each on a character boundary).
fn char_offsets(text: &str, bytes: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut wanted = bytes.iter().peekable();
    for (n, (at, _)) in text.char_indices().chain([(text.len(), ' ')]).enumerate() {
        while wanted.next_if(|&&b| b == at).is_some() {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_count(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn chunk(text: &str, max_tokens: usize, overlap_tokens: usize) -> Vec<Chunk> {
        chunk_text(text, &ChunkParams { max_tokens, overlap_tokens }, &words_count)
    }

    /// Small deterministic generator, so the long document is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    const VOCAB: &[&str] = &[
        "memory", "index", "vector", "token", "model", "query", "store", "the", "a", "of", "and", "fast", "e.g.",
        "3.14",
    ];

    fn sentence(rng: &mut Lcg, words: usize, end: &str) -> String {
        let mut s = String::from("Word");
        for _ in 1..words {
            s.push(' ');
            s.push_str(VOCAB[rng.below(VOCAB.len())]);
        }
        s.push_str(end);
        s
    }

    /// A long Markdown document: headings of levels 1–3, paragraphs of 1–8 sentences (some
    /// lines wrapped), one paragraph of 120 sentences and one sentence of 700 words.
    /// Returns the text and the byte spans of its paragraphs that follow another paragraph.
    fn long_document() -> (String, Vec<(usize, usize)>) {
        let mut rng = Lcg(7);
        let mut doc = String::from("Preamble before any heading. It has two sentences.\n\n");
        let mut inner = Vec::new();
        for section in 0..30 {
            let level = 1 + rng.below(3);
            doc.push_str(&format!("{} Section {section}\n\n", "#".repeat(level)));
            for p in 0..1 + rng.below(4) {
                let start = doc.len();
                if section == 10 && p == 1 {
                    for _ in 0..120 {
                        let n = 3 + rng.below(15);
                        doc.push_str(&sentence(&mut rng, n, ". "));
                    }
                } else if section == 20 && p == 0 {
                    doc.push_str(&sentence(&mut rng, 700, "!"));
                } else {
                    for s in 0..1 + rng.below(8) {
                        let n = 2 + rng.below(20);
                        doc.push_str(&sentence(&mut rng, n, "?"));
                        doc.push_str(if s % 3 == 2 { "\n" } else { " " });
                    }
                }
                let end = doc.trim_end().len();
                if p > 0 {
                    inner.push((start, end));
                }
                doc.push_str("\n\n");
            }
        }
        (doc, inner)
    }

    /// Spans are exact, texts are trimmed and non-empty, indices follow, starts move forward.
    fn check_spans(text: &str, chunks: &[Chunk]) {
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index, i);
            let slice: String = text.chars().skip(c.char_start).take(c.char_end - c.char_start).collect();
            assert_eq!(slice, c.text, "chunk {i}");
            assert!(!c.text.is_empty() && c.text.trim() == c.text, "chunk {i}: {:?}", c.text);
            if i > 0 {
                assert!(c.char_start > chunks[i - 1].char_start, "chunk {i} does not move forward");
            }
        }
    }

    fn check_coverage(text: &str, chunks: &[Chunk]) {
        let mut covered = vec![false; text.chars().count()];
        for c in chunks {
            covered[c.char_start..c.char_end].iter_mut().for_each(|x| *x = true);
        }
        for (i, ch) in text.chars().enumerate() {
            assert!(ch.is_whitespace() || covered[i], "character {i} ({ch:?}) is in no chunk");
        }
    }

    fn is_heading_line(line: &str) -> bool {
        heading_line(line.trim()).is_some()
    }

    #[test]
    fn long_document_respects_budget_spans_coverage_and_structure() {
        let (doc, inner_paragraphs) = long_document();
        for (max, overlap) in [(200, 30), (50, 10), (20, 5), (7, 3), (1, 0)] {
            let chunks = chunk(&doc, max, overlap);
            assert!(chunks.len() > 1);
            for c in &chunks {
                assert!(words_count(&c.text) <= max, "max {max}: {} tokens in {:?}", words_count(&c.text), c.text);
            }
            check_spans(&doc, &chunks);
            check_coverage(&doc, &chunks);
            if max < 3 {
                continue; // a heading line alone is 3 tokens: nothing can stay with it
            }
            for (i, c) in chunks.iter().enumerate().take(chunks.len() - 1) {
                let last = c.text.lines().last().unwrap();
                assert!(!is_heading_line(last), "max {max}: chunk {i} ends with a heading: {:?}", c.text);
            }
            // A paragraph after another paragraph has nothing to stay with: when it fits,
            // it is in one chunk whole (the ASCII document's bytes are its characters).
            for &(s, e) in &inner_paragraphs {
                if words_count(&doc[s..e]) <= max {
                    assert!(
                        chunks.iter().any(|c| c.char_start <= s && e <= c.char_end),
                        "max {max}: paragraph split: {:?}",
                        &doc[s..e]
                    );
                }
            }
        }
    }

    #[test]
    fn short_document_chunks_start_at_headings_and_keep_paragraphs() {
        let doc = "# Alpha\n\nFirst para one two.\n\nSecond para three four.\n\n## Beta\n\nThird para five six.\n";
        let texts = |chunks: Vec<Chunk>| chunks.into_iter().map(|c| c.text).collect::<Vec<_>>();
        assert_eq!(
            texts(chunk(doc, 100, 10)),
            ["# Alpha\n\nFirst para one two.\n\nSecond para three four.", "## Beta\n\nThird para five six."]
        );
        // Both paragraphs do not fit beside the heading: the cut is between them.
        assert_eq!(
            texts(chunk(doc, 9, 0)),
            ["# Alpha\n\nFirst para one two.", "Second para three four.", "## Beta\n\nThird para five six."]
        );
        // With overlap, the second chunk repeats the end of the first, never the heading.
        let chunks = chunk(doc, 9, 3);
        assert_eq!(texts(chunks.clone())[1], "para one two.\n\nSecond para three four.");
        check_spans(doc, &chunks);
    }

    #[test]
    fn heading_keeps_its_body_when_the_first_paragraph_does_not_fit_beside_it() {
        let doc = "# Title\n\nOne two three. Four five six seven. Eight nine ten.";
        let chunks = chunk(doc, 10, 0);
        assert_eq!(chunks[0].text, "# Title\n\nOne two three. Four five six seven.");
        assert_eq!(chunks[1].text, "Eight nine ten.");
        assert!(chunks.iter().all(|c| c.heading.as_deref() == Some("Title")));
    }

    #[test]
    fn heading_paths_are_recorded() {
        let doc = "Intro text.\n\n# A\n\n## B\n\ntext b\n\n### C ###\n\ntext c\n\n```sh\n# not a heading\n```\n\n\
                   ## D\n\ntext d\n\n    # indented code\n\n# E\n\ntext e\n";
        let chunks = chunk(doc, 100, 0);
        let got: Vec<(Option<&str>, &str)> = chunks.iter().map(|c| (c.heading.as_deref(), c.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (None, "Intro text."),
                (Some("A > B"), "# A\n\n## B\n\ntext b"),
                (Some("A > B > C"), "### C ###\n\ntext c\n\n```sh\n# not a heading\n```"),
                (Some("A > D"), "## D\n\ntext d\n\n    # indented code"),
                (Some("E"), "# E\n\ntext e"),
            ]
        );
    }

    #[test]
    fn consecutive_chunks_of_a_long_paragraph_overlap_by_about_the_overlap() {
        let doc: String = (0..60).map(|i| format!("Sentence {i} has six words here. ")).collect();
        let doc = doc.trim_end();
        let (max, overlap) = (40, 9);
        let chunks = chunk(doc, max, overlap);
        assert!(chunks.len() > 5);
        for pair in chunks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(b.char_start < a.char_end, "no overlap between {:?} and {:?}", a.text, b.text);
            let shared = &doc[b.char_start..a.char_end];
            let n = words_count(shared);
            assert!(n * 2 >= overlap && n <= overlap, "{n} tokens shared: {shared:?}");
            // Sentences of 6 words fit in the overlap, so it starts at one.
            assert!(shared.starts_with("Sentence "), "{shared:?}");
        }
        check_coverage(doc, &chunks);
        // Without sentence ends, the overlap is cut at a word: exactly `overlap` words.
        let doc: String = (0..200).map(|i| format!("w{i} ")).collect();
        let chunks = chunk(doc.trim_end(), max, overlap);
        for pair in chunks.windows(2) {
            assert_eq!(words_count(&doc[pair[1].char_start..pair[0].char_end]), overlap);
        }
    }

    #[test]
    fn sentences_are_split_at_ends_but_not_after_abbreviations() {
        let text = "Use tools, e.g. hammers. Then rest! Is it 3.14? Yes etc. and more. \"Quoted.\" 終わり。次の文。";
        let got: Vec<&str> = sentences(text, 0, text.len()).into_iter().map(|(s, e)| &text[s..e]).collect();
        assert_eq!(
            got,
            [
                "Use tools, e.g. hammers.",
                "Then rest!",
                "Is it 3.14?",
                "Yes etc. and more.",
                "\"Quoted.\"",
                "終わり。",
                "次の文。"
            ]
        );
    }

    #[test]
    fn unicode_keeps_spans_exact() {
        let doc = "# Café ☕ naïve\n\nÉlan vital über façade. 日本語の文章です。もう一つの文。 🎉🎉 party time! \
                   Ünïcödé wörds here.\n\n## 中文\n\n这是一个很长的句子没有空格也没有标点符号🙂👍🏽👨‍👩‍👧\n";
        for (max, overlap) in [(100, 0), (4, 2), (3, 1), (2, 0), (1, 0)] {
            let chunks = chunk(doc, max, overlap);
            for c in &chunks {
                assert!(words_count(&c.text) <= max);
            }
            check_spans(doc, &chunks);
            check_coverage(doc, &chunks);
            assert_eq!(chunks.last().unwrap().heading.as_deref(), Some("Café ☕ naïve > 中文"));
        }
        // A word longer than the budget (by a counter of characters) is cut between characters.
        let chars = |s: &str| s.chars().count();
        let chunks = chunk_text("日本語の文章です🙂👍🏽", &ChunkParams { max_tokens: 3, overlap_tokens: 0 }, &chars);
        assert!(chunks.iter().all(|c| chars(&c.text) <= 3));
        check_spans("日本語の文章です🙂👍🏽", &chunks);
        assert_eq!(chunks.iter().map(|c| c.text.as_str()).collect::<String>(), "日本語の文章です🙂👍🏽");
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk("", 10, 2).is_empty());
        assert!(chunk(" \n\n\t  \n", 10, 2).is_empty());
    }
}
