//! Hostile uploads against the real server: PDFs and HTML built to crash, exhaust or
//! stall a parser. Each must end as a 4xx JSON error naming the field at fault, never a
//! 5xx or a dropped connection; the server keeps answering `/healthz`, still ingests and
//! finds a normal document afterwards, and its memory stays within a bound. A deep but
//! finite document still reads, and uploads at once never run more extraction children
//! than configured.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

const KEY: Option<&str> = Some("acme-key");
/// The text limit the test server runs with, so that "just over it" is a small upload.
const MAX_TEXT_BYTES: usize = 1 << 20;
/// Extraction children the test server runs at once.
const CONCURRENCY: usize = 2;
/// How much the server's peak resident memory may grow over all the hostile uploads.
/// The server itself holds at most an upload body (under the 16 MiB body limit), the
/// text read back (under `MAX_TEXT_BYTES`) and a few buffers per request; with the eight
/// requests of the concurrent round that is about 8 × 18 MiB, so 256 MiB leaves room for
/// the allocator and still catches any parse inside the server: the deflate bomb alone
/// inflates to 4 GiB, the wide page tree's text to several times the limit.
const RSS_GROWTH_BOUND_KB: u64 = 256 * 1024;

fn start_server(dir: &std::path::Path) -> Server {
    let max_text = MAX_TEXT_BYTES.to_string();
    let server = Server::start(
        dir,
        &[
            ("ENGRAM_AUTH__KEYS", "acme=acme-key"),
            ("ENGRAM_MODEL__GENERATOR", ""),
            ("ENGRAM_LIMITS__DOCUMENT_TEXT_BYTES", &max_text),
            // Shorter than the defaults so that the CPU-bound attacks end sooner.
            ("ENGRAM_EXTRACTION__CPU_SECS", "10"),
            ("ENGRAM_EXTRACTION__TIMEOUT_SECS", "30"),
            ("ENGRAM_EXTRACTION__CONCURRENCY", &CONCURRENCY.to_string()),
        ],
    );
    server.wait_ready();
    server
}

/// A PDF made of these object bodies (numbered from 1; object 1 is the catalog), with a
/// correct cross-reference table.
fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref_at = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

fn obj(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

/// A stream object: `extra` goes into its dictionary next to the length.
fn stream(extra: &str, data: &[u8]) -> Vec<u8> {
    let mut s = format!("<< /Length {} {extra} >>\nstream\n", data.len()).into_bytes();
    s.extend_from_slice(data);
    s.extend_from_slice(b"\nendstream");
    s
}

const FONT: &str = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>";

/// A one-page PDF with one line of text (objects 1–5).
fn normal_pdf(sentence: &str) -> Vec<u8> {
    pdf(&[
        obj("<< /Type /Catalog /Pages 2 0 R >>"),
        obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        obj("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"),
        stream("", format!("BT /F1 12 Tf 72 720 Td ({sentence}) Tj ET").as_bytes()),
        obj(FONT),
    ])
}

/// A page that draws form XObject Fm0, whose own content draws Fm0 again: a renderer
/// without a depth limit recurses until its stack overflows.
fn self_drawing_xobject() -> Vec<u8> {
    pdf(&[
        obj("<< /Type /Catalog /Pages 2 0 R >>"),
        obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        obj("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /XObject << /Fm0 5 0 R >> >> >>"),
        stream("", b"q /Fm0 Do Q"),
        stream("/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /Fm0 5 0 R >> >>", b"/Fm0 Do"),
    ])
}

/// A page whose content stream is a zlib stream of `gib` GiB of zeros, written in about
/// `gib` MiB: one block of 64 MiB of zeros is compressed once, ending in a full flush
/// (so it refers to nothing before it and ends byte-aligned), then repeated.
fn deflate_bomb(gib: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const BLOCK: usize = 64 << 20;
    let zeros = vec![0u8; BLOCK];
    let mut raw = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(1 << 20);
    loop {
        let done = raw.total_in() as usize;
        raw.compress_vec(&zeros[done..], &mut block, FlushCompress::Full).unwrap();
        if raw.total_in() as usize == BLOCK && block.len() < block.capacity() {
            break;
        }
        block.reserve(1 << 20);
    }
    let copies = gib * 1024 / 64;
    let mut zlib = vec![0x78, 0xDA];
    for _ in 0..copies {
        zlib.extend_from_slice(&block);
    }
    // The last block: empty, stored, final. Then the Adler-32 of n zeros: a = 1, b = n.
    zlib.extend_from_slice(&[0x01, 0x00, 0x00, 0xFF, 0xFF]);
    let n = copies * BLOCK as u64;
    zlib.extend_from_slice(&((((n % 65521) << 16) | 1) as u32).to_be_bytes());
    pdf(&[
        obj("<< /Type /Catalog /Pages 2 0 R >>"),
        obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        obj("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"),
        stream("/Filter /FlateDecode", &zlib),
        obj(FONT),
    ])
}

/// A page drawing form XObject 1 of a chain of `levels`, each drawing the next, the last
/// one a line of text: deep, but finite, as a legitimate document may be.
fn nested_forms(levels: usize, sentence: &str) -> Vec<u8> {
    let mut objects = vec![
        obj("<< /Type /Catalog /Pages 2 0 R >>"),
        obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        obj("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /XObject << /X 6 0 R >> >> >>"),
        stream("", b"q /X Do Q"),
        obj(FONT),
    ];
    for level in 0..levels {
        let id = 6 + level;
        let form = "/Type /XObject /Subtype /Form /BBox [0 0 612 792]";
        objects.push(if level + 1 == levels {
            let text = format!("BT /F1 12 Tf 72 720 Td ({sentence}) Tj ET");
            stream(&format!("{form} /Resources << /Font << /F1 5 0 R >> >>"), text.as_bytes())
        } else {
            stream(&format!("{form} /Resources << /XObject << /X {} 0 R >> >>", id + 1), b"/X Do")
        });
    }
    pdf(&objects)
}

/// `depth` nested page tree nodes, each the only kid of the one above, a page at the bottom.
fn deep_page_tree(depth: usize) -> Vec<u8> {
    let mut objects = vec![obj("<< /Type /Catalog /Pages 2 0 R >>")];
    for id in 2..depth + 2 {
        let parent = if id == 2 { String::new() } else { format!("/Parent {} 0 R", id - 1) };
        objects.push(obj(format!("<< /Type /Pages /Kids [{} 0 R] /Count 1 {parent} >>", id + 1)));
    }
    let (page, content, font) = (depth + 2, depth + 3, depth + 4);
    objects.push(obj(format!(
        "<< /Type /Page /Parent {} 0 R /Contents {content} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>",
        page - 1
    )));
    objects.push(stream("", b"BT /F1 12 Tf 72 720 Td (At the bottom of the tree.) Tj ET"));
    objects.push(obj(FONT));
    pdf(&objects)
}

/// One page tree node with `pages` pages, each drawing the same line of text: its text
/// is well over the test server's text limit.
fn wide_page_tree(pages: usize) -> Vec<u8> {
    let kids: Vec<String> = (0..pages).map(|i| format!("{} 0 R", i + 5)).collect();
    let mut objects = vec![
        obj("<< /Type /Catalog /Pages 2 0 R >>"),
        obj(format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> >>",
            kids.join(" ")
        )),
        stream("", b"BT /F1 12 Tf 72 720 Td (One more page of the very wide tree.) Tj ET"),
        obj(FONT),
    ];
    objects.extend((0..pages).map(|_| obj("<< /Type /Page /Parent 2 0 R /Contents 3 0 R >>")));
    pdf(&objects)
}

fn deep_html(depth: usize) -> String {
    format!("<html><body>{}deep inside{}</body></html>", "<div>".repeat(depth), "</div>".repeat(depth))
}

/// An HTML page whose text is just over `limit` bytes.
fn html_over(limit: usize) -> String {
    let sentence = "The quick brown fox jumps over the lazy dog again. ";
    let words = sentence.repeat(limit / sentence.len() + 100);
    format!("<html><body><p>{words}</p></body></html>")
}

/// The server's resident memory now and at its peak, in KiB, from `/proc/<pid>/status`.
fn memory_kb(server: &Server) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("the server is alive");
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The server's running `engram-extract` children, from `/proc/<pid>/task/*/children`.
fn extraction_children(server: &Server) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
    let children: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    children
        .iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Running or waiting, not a zombie about to be reaped.
            stat.contains("(engram-extract)") && !stat.contains(") Z")
        })
        .count()
}

fn assert_alive(server: &Server, after: &str) {
    let (status, _, body) = server.get("/healthz");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "/healthz after {after}");
}

/// The answer to a hostile upload: a 4xx JSON error naming `param`. Returns the message.
fn assert_refused(what: &str, answer: Result<(u16, Value), String>, param: &str) -> String {
    let (status, body) = answer.unwrap_or_else(|e| panic!("{what}: no HTTP answer ({e})"));
    assert!((400..500).contains(&status), "{what}: status {status}: {body}");
    assert_eq!(body["error"]["param"], param, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: {body}")).to_owned();
    eprintln!("{what}: {status} {message}");
    message
}

fn post_json_html(server: &Server, html: &str) -> Result<(u16, Value), String> {
    let body = json!({ "title": "Hostile", "text": html, "mime": "text/html" });
    let res =
        ureq::post(&format!("{}/v1/documents", server.base)).set("Authorization", "Bearer acme-key").send_json(body);
    match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => Ok((r.status(), r.into_json().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// A normal document still goes in and is found afterwards.
fn assert_still_ingests(server: &Server, sentence: &str, query: &str) {
    let (status, body) = server.upload(KEY, "normal.pdf", &normal_pdf(sentence)).unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, found) =
        server.call("POST", "/v1/memories/search", KEY, Some(&json!({ "query": query, "user_id": "alice", "k": 3 })));
    assert_eq!(status, 200, "{found}");
    let hits: Vec<&str> = found["results"].as_array().unwrap().iter().filter_map(|r| r["text"].as_str()).collect();
    assert!(hits.iter().any(|t| t.contains(sentence)), "{query}: {hits:?}");
}

#[test]
fn hostile_uploads_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    // The baseline includes a first ingestion, so that the embedder's own working
    // memory is not counted as growth.
    assert_still_ingests(&server, "The ferry to Harrow Island leaves at seven.", "When does the ferry leave?");
    let (_, baseline) = memory_kb(&server);

    let started = Instant::now();
    let message =
        assert_refused("self-drawing XObject", server.upload(KEY, "loop.pdf", &self_drawing_xobject()), "file");
    assert!(message.contains("loop.pdf"), "{message}");
    assert_alive(&server, "the self-drawing XObject");

    let bomb = deflate_bomb(4);
    assert!(bomb.len() < 8 << 20, "the bomb is {} bytes", bomb.len());
    let message = assert_refused("deflate bomb", server.upload(KEY, "bomb.pdf", &bomb), "file");
    assert!(message.contains("bomb.pdf"), "{message}");
    assert_alive(&server, "the deflate bomb");

    let whole = normal_pdf("A sentence that the truncation cuts off.");
    let cut_in_stream = &whole[..whole.windows(6).position(|w| w == b"stream").unwrap() + 20];
    assert_refused("truncated file", server.upload(KEY, "cut.pdf", cut_in_stream), "file");
    assert_alive(&server, "the truncated file");
    let xref = whole.windows(4).position(|w| w == b"xref").unwrap();
    assert_refused("truncated xref", server.upload(KEY, "xref.pdf", &whole[..xref + 30]), "file");
    assert_alive(&server, "the truncated xref");

    assert_refused("deep page tree", server.upload(KEY, "deep.pdf", &deep_page_tree(100_000)), "file");
    assert_alive(&server, "the deep page tree");
    let message = assert_refused("wide page tree", server.upload(KEY, "wide.pdf", &wide_page_tree(120_000)), "file");
    assert!(message.contains("wide.pdf"), "{message}");
    assert_alive(&server, "the wide page tree");

    let deep = deep_html(200_000);
    assert_refused("deep HTML", server.upload(KEY, "deep.html", deep.as_bytes()), "file");
    assert_alive(&server, "the deep HTML");
    assert_refused("deep HTML as JSON", post_json_html(&server, &deep), "text");
    assert_alive(&server, "the deep HTML as JSON");
    let long = html_over(MAX_TEXT_BYTES);
    let (status, body) = server.upload(KEY, "long.html", long.as_bytes()).unwrap();
    assert_eq!((status, body["error"]["param"].as_str()), (413, Some("file")), "{body}");
    let (status, body) = post_json_html(&server, &long).unwrap();
    assert_eq!((status, body["error"]["param"].as_str()), (413, Some("text")), "{body}");
    assert_alive(&server, "the long HTML");
    eprintln!("hostile uploads took {:?}", started.elapsed());

    assert_still_ingests(&server, "The lighthouse keeper winds the clock at noon.", "Who winds the clock?");
    // A deep but finite document still reads: 2,000 nested forms need about 13 MiB of
    // stack (measured: 6 to 7 KiB per level), more than a default thread has.
    let sentence = "The innermost form says the kettle is in the attic.";
    let (status, body) = server.upload(KEY, "nested.pdf", &nested_forms(2_000, sentence)).unwrap();
    assert_eq!(status, 201, "{body}");
    let (_, found) = server.call(
        "POST",
        "/v1/memories/search",
        KEY,
        Some(&json!({ "query": "Where is the kettle?", "user_id": "alice", "k": 3 })),
    );
    assert!(found.to_string().contains("kettle is in the attic"), "{found}");
    let (rss, peak) = memory_kb(&server);
    eprintln!("server memory: baseline peak {baseline} KiB, now {rss} KiB, peak {peak} KiB");
    assert!(peak - baseline < RSS_GROWTH_BOUND_KB, "peak {peak} KiB against a baseline of {baseline} KiB");
}

#[test]
fn concurrent_hostile_uploads_all_end_in_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    assert_still_ingests(&server, "The orchard is pruned in late February.", "When is the orchard pruned?");
    let (_, baseline) = memory_kb(&server);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("loop1.pdf", self_drawing_xobject()),
        ("bomb1.pdf", deflate_bomb(4)),
        ("deep1.html", deep_html(200_000).into_bytes()),
        ("loop2.pdf", self_drawing_xobject()),
        ("bomb2.pdf", deflate_bomb(4)),
        ("long1.html", html_over(MAX_TEXT_BYTES).into_bytes()),
        ("wide1.pdf", wide_page_tree(120_000)),
        ("loop3.pdf", self_drawing_xobject()),
    ];
    let answers = std::thread::scope(|s| {
        let uploads: Vec<_> =
            files.iter().map(|(name, bytes)| (name, s.spawn(|| server.upload(KEY, name, bytes)))).collect();
        // The server answers health checks while the uploads run, and never runs more
        // extraction children than its bound.
        let mut most = 0;
        while uploads.iter().any(|(_, u)| !u.is_finished()) {
            assert_alive(&server, "some concurrent hostile uploads");
            most = most.max(extraction_children(&server));
            assert!(most <= CONCURRENCY, "{most} extraction children at once");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(most >= 1, "no extraction child was ever seen");
        eprintln!("at most {most} extraction children at once");
        uploads.into_iter().map(|(name, u)| (name, u.join().unwrap())).collect::<Vec<_>>()
    });
    for (name, answer) in answers {
        assert_refused(name, answer, "file");
    }
    assert_alive(&server, "the concurrent hostile uploads");
    assert_still_ingests(&server, "The boathouse key hangs behind the blue door.", "Where is the boathouse key?");
    let (rss, peak) = memory_kb(&server);
    eprintln!("server memory: baseline peak {baseline} KiB, now {rss} KiB, peak {peak} KiB");
    assert!(peak - baseline < RSS_GROWTH_BOUND_KB, "peak {peak} KiB against a baseline of {baseline} KiB");
}
