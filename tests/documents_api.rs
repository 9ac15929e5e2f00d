//! `/v1/documents` and `/v1/jobs/{id}` on the real server with the real embedding model:
//! ingesting Markdown (searchable by section, idempotent), multipart uploads of HTML,
//! text and PDF files, refusals, tenant isolation, deletion, and large documents
//! ingested by a job.

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");
const GLOBEX: Option<&str> = Some("globex-key");

const MANUAL: &str = "# Orbitron user manual

## Installation

Download the Orbitron installer for Windows, macOS or Linux and run it with administrator rights. \
The installer needs four gigabytes of free disk space.

## Backups

Orbitron takes a nightly snapshot of your vault at two in the morning. Each snapshot is kept for \
thirty days and can be restored from the Backups tab.

## Networking

The sync server listens on TCP port 7443. Open that port in your firewall, and set the proxy \
address in the preferences when your office requires one.

## Licensing

Every seat licence belongs to one named user. Licences renew every year and the invoices are \
emailed to the billing contact of your organisation.

## Troubleshooting

When the application freezes at startup, delete the cache folder and restart it. Error code E42 \
means that another process has locked the vault.

## Privacy

Your notes are encrypted at rest with AES-256, and the encryption keys never leave your device.
";

/// Polls an acme job until it is done (failing on `failed`, a 404 or a minute's wait)
/// and returns its last report.
fn wait_for_job(server: &Server, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, report) = server.call("GET", &format!("/v1/jobs/{job}"), ACME, None);
        assert_eq!(status, 200, "{report}");
        assert_ne!(report["status"], "failed", "{report}");
        if report["status"] == "done" {
            return report;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {report}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn texts(found: &Value) -> Vec<String> {
    found["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_owned()).collect()
}

fn search(server: &Server, key: Option<&str>, query: &str) -> Vec<String> {
    let (status, found) =
        server.call("POST", "/v1/memories/search", key, Some(&json!({ "query": query, "user_id": "alice", "k": 3 })));
    assert_eq!(status, 200, "{found}");
    texts(&found)
}

/// POSTs a multipart form with one file and a title; returns the status and the body.
fn upload(server: &Server, file_name: &str, bytes: &[u8]) -> (u16, Value) {
    let boundary = "engram-test-boundary-5f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nUpload {file_name}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let res = ureq::post(&format!("{}/v1/documents", server.base))
        .set("Authorization", "Bearer acme-key")
        .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
        .send_bytes(&body);
    let res = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("upload {file_name}: {e}"),
    };
    (res.status(), res.into_json().unwrap_or_default())
}

/// A one-page PDF with one line of Helvetica text, its cross-reference table computed.
fn tiny_pdf(sentence: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({sentence}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref_at = pdf.len();
    let mut xref = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for o in offsets {
        xref.push_str(&format!("{o:010} 00000 n \n"));
    }
    pdf.extend_from_slice(xref.as_bytes());
    pdf.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    pdf
}

#[test]
fn documents_are_chunked_searchable_idempotent_scoped_and_deletable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key"), ("ENGRAM_MODEL__GENERATOR", "")],
    );
    server.wait_ready();

    // A Markdown manual: one chunk per section, each found by a question about it.
    let doc = json!({ "title": "Orbitron manual", "text": MANUAL, "mime": "text/markdown",
        "metadata": { "product": "orbitron" } });
    let (status, created) = server.call("POST", "/v1/documents", ACME, Some(&doc));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let chunks = created["chunks"].as_u64().unwrap();
    assert!(chunks >= 6, "{created}");
    assert_eq!((created["status"].as_str(), created["title"].as_str()), (Some("ready"), Some("Orbitron manual")));
    assert_eq!(created["metadata"]["product"], "orbitron");
    for (question, word) in [
        ("How long is a backup snapshot kept?", "thirty days"),
        ("Which port do I have to open in the firewall?", "7443"),
        ("Who receives the invoices when the licence renews?", "billing contact"),
    ] {
        let found = search(&server, ACME, question);
        assert!(found.iter().any(|t| t.contains(word)), "{question}: {found:?}");
    }
    let (_, found) = server.call(
        "POST",
        "/v1/memories/search",
        ACME,
        Some(&json!({ "query": "error code E42", "user_id": "alice", "k": 1 })),
    );
    let hit = &found["results"][0];
    assert_eq!(hit["kind"], "knowledge");
    assert_eq!(hit["source"]["document_id"], id.as_str());
    assert_eq!(hit["metadata"]["title"], "Orbitron manual");
    assert_eq!(hit["metadata"]["heading"], "Orbitron user manual > Troubleshooting");

    // The same text again is the same document, with no new chunks.
    let (status, again) = server.call("POST", "/v1/documents", ACME, Some(&doc));
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));
    let (status, read) = server.call("GET", &format!("/v1/documents/{id}"), ACME, None);
    assert_eq!((status, read["chunks"].as_u64()), (200, Some(chunks)));

    // Uploads: HTML loses its tags, text is taken as it is, PDF text is extracted.
    let html = b"<html><head><title>Greenhouse</title></head><body><h1>Greenhouse care</h1>\
        <p>Water the tomato seedlings with collected rainwater every second evening.</p></body></html>";
    let (status, body) = upload(&server, "greenhouse.html", html);
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["mime"].as_str(), body["source_name"].as_str()), (Some("text/html"), Some("greenhouse.html")));
    let found = search(&server, ACME, "How often should the tomato seedlings be watered?");
    assert!(found.iter().any(|t| t.contains("rainwater")), "{found:?}");
    assert!(found.iter().all(|t| !t.contains("<p>")), "{found:?}");
    let (status, body) =
        upload(&server, "office.txt", b"The office coffee machine is descaled on the first Monday of every month.");
    assert_eq!(status, 201, "{body}");
    assert!(search(&server, ACME, "When is the coffee machine descaled?").iter().any(|t| t.contains("descaled")));
    let (status, body) =
        upload(&server, "harbour.pdf", &tiny_pdf("The harbour lighthouse lamp is polished every Sunday morning."));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["mime"], "application/pdf");
    let found = search(&server, ACME, "When is the lighthouse lamp polished?");
    assert!(found.iter().any(|t| t.contains("lighthouse lamp is polished")), "{found:?}");

    // Refusals name what is wrong.
    let (status, body) = upload(&server, "setup.exe", b"MZ\x90\x00");
    assert_eq!(status, 415, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("exe"), "{body}");
    let (status, body) = server.call("POST", "/v1/documents", ACME, Some(&json!({ "title": "Empty", "text": "  " })));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("text"), "{body}");

    // Another tenant sees none of it and cannot delete it.
    let path = format!("/v1/documents/{id}");
    assert_eq!(server.call("GET", &path, GLOBEX, None).0, 404);
    assert_eq!(server.call("DELETE", &path, GLOBEX, None).0, 404);
    assert_eq!(server.call("GET", "/v1/documents", GLOBEX, None).1["data"], json!([]));
    assert!(search(&server, GLOBEX, "How long is a backup snapshot kept?").is_empty());
    let (_, listed) = server.call("GET", "/v1/documents", ACME, None);
    assert_eq!(listed["data"].as_array().unwrap().len(), 4, "{listed}");

    // Deleting the manual takes its chunks out of search.
    assert_eq!(server.call("DELETE", &path, ACME, None).0, 204);
    assert_eq!(server.call("GET", &path, ACME, None).0, 404);
    assert_eq!(server.call("DELETE", &path, ACME, None).0, 404);
    for query in ["How long is a backup snapshot kept?", "snapshot", "firewall port 7443"] {
        let found = search(&server, ACME, query);
        assert!(found.iter().all(|t| !t.contains("snapshot") && !t.contains("7443")), "{query}: {found:?}");
    }

    // A large document is ingested by a job that reports its progress.
    let valleys = ["north", "south", "east", "west", "upper", "lower", "misty", "stony", "green"];
    let mut big = String::from("# Weather stations\n\n");
    for n in 1..=45 {
        let valley = valleys[n % valleys.len()];
        big.push_str(&format!(
            "## Station {n}\n\nWeather station number {n} stands in the {valley} valley at {} metres and reports \
             rainfall every {} minutes.\n\n",
            300 + 17 * n,
            5 + n % 7
        ));
        if n == 37 {
            big.push_str("Station 37 also measures glacier meltwater with a quartz flow gauge.\n\n");
        }
    }
    let (status, started) = server.call(
        "POST",
        "/v1/documents",
        ACME,
        Some(&json!({ "title": "Stations", "text": big, "user_id": "alice" })),
    );
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["status"], "pending");
    let job = started["job_id"].as_str().unwrap().to_owned();
    let big_id = started["document_id"].as_str().unwrap().to_owned();
    assert_eq!(server.call("GET", &format!("/v1/jobs/{job}"), GLOBEX, None).0, 404);
    let report = wait_for_job(&server, &job);
    let total = report["progress"]["total"].as_u64().unwrap();
    assert!(total > 32, "{report}");
    assert_eq!(report["progress"]["done"].as_u64(), Some(total));
    assert_eq!(report["document_id"], big_id.as_str());
    let (status, read) = server.call("GET", &format!("/v1/documents/{big_id}"), ACME, None);
    assert_eq!((status, read["status"].as_str(), read["user_id"].as_str()), (200, Some("ready"), Some("alice")));
    assert_eq!(read["chunks"].as_u64(), Some(total));
    let found = search(&server, ACME, "Which station measures glacier meltwater?");
    assert!(found.iter().any(|t| t.contains("quartz flow gauge")), "{found:?}");
    let (_, mine) = server.call("GET", "/v1/documents?user_id=alice", ACME, None);
    assert_eq!(mine["data"].as_array().unwrap().len(), 1, "{mine}");
}

/// A server killed while a job runs takes the job up again when it comes back: the same
/// job id reports progress to the end and the document is then complete and searchable.
#[test]
fn a_job_cut_off_by_a_crash_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ENGRAM_AUTH__KEYS", "acme=acme-key"), ("ENGRAM_MODEL__GENERATOR", "")];
    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    let mut big = String::from("# Lighthouses\n\n");
    for n in 1..=300 {
        big.push_str(&format!(
            "## Light {n}\n\nLighthouse number {n} flashes every {} seconds and was first lit in {}.\n\n",
            3 + n % 11,
            1820 + n
        ));
        if n == 250 {
            big.push_str("Lighthouse 250 keeps a brass foghorn named Old Bellow.\n\n");
        }
    }
    let body = json!({ "title": "Lights", "text": big });
    let (status, started) = server.call("POST", "/v1/documents", ACME, Some(&body));
    assert_eq!(status, 202, "{started}");
    let (job, doc) = (started["job_id"].as_str().unwrap().to_owned(), started["document_id"].as_str().unwrap());
    let doc_path = format!("/v1/documents/{doc}");
    // Not written yet (a document is written at once, at the end of its job) ...
    assert_eq!(server.call("GET", &doc_path, ACME, None).0, 404);
    drop(server); // ... when the server is killed (SIGKILL).

    let server = Server::start(dir.path(), &env);
    server.wait_ready();
    let report = wait_for_job(&server, &job);
    let total = report["progress"]["total"].as_u64().unwrap();
    let (status, read) = server.call("GET", &doc_path, ACME, None);
    assert_eq!((status, read["status"].as_str(), read["chunks"].as_u64()), (200, Some("ready"), Some(total)));
    let found = search(&server, ACME, "Which lighthouse has a brass foghorn?");
    assert!(found.iter().any(|t| t.contains("Old Bellow")), "{found:?}");
    // Uploading the same text again finds the document, not a second job.
    let (status, again) = server.call("POST", "/v1/documents", ACME, Some(&body));
    assert_eq!((status, again["id"].as_str()), (200, Some(doc)), "{again}");
}
