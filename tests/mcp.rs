//! The MCP server at `/mcp`, driven by the official MCP Python SDK (installed in the venv
//! by `make test`, which sets ENGRAM_PYTHON) over the streamable HTTP transport: the six
//! tools are listed with their schemas and each is called against the real store and
//! models; keys and tenants hold as on the REST API; bad arguments come back as tool
//! errors naming the field, and nothing stored is touched by them.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::{json, Value};

/// Runs `script` with the SDK against `server`'s `/mcp`; its last output line is JSON.
fn run_client(script: &str, server: &Server, data: &Value) -> Value {
    let python = std::env::var("ENGRAM_PYTHON")
        .expect("ENGRAM_PYTHON names the venv's python with the mcp package; run the tests with `make test`");
    let url = format!("{}/mcp", server.base);
    let out = Command::new(python).args(["-c", script, &url, &data.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// The client: `call(key, steps)` runs each `[tool, arguments]` step in one MCP
/// connection with that key and records what came back.
const PRELUDE: &str = r#"
import asyncio, json, sys
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL = sys.argv[1]

STATUSES = []

async def record(response):
    STATUSES.append(response.status_code)

async def session_run(key, work):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    hooks = {"response": [record]}
    async with httpx2.AsyncClient(headers=headers, timeout=120, event_hooks=hooks) as http:
        async with streamable_http_client(URL, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

def outcome(result):
    text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
    return {"is_error": bool(result.is_error), "structured": result.structured_content, "text": text}

async def call(session, name, args):
    return outcome(await session.call_tool(name, args))
"#;

const TOOLS_SCRIPT: &str = r#"
async def main():
    data = json.loads(sys.argv[2])
    report = {}

    async def tools(session):
        listed = await session.list_tools()
        return {t.name: {"schema": t.input_schema, "description": t.description or ""} for t in listed.tools}
    report["tools"] = await session_run("acme-key", tools)

    async def acme(session):
        r = {}
        r["mountain"] = await call(session, "add_memory", {"user_id": "dora", "text": "My favourite mountain is Galdhøpiggen in Norway."})
        r["tea"] = await call(session, "add_memory", {"user_id": "dora", "text": "I drink green tea every morning.", "kind": "fact"})
        r["again"] = await call(session, "add_memory", {"user_id": "dora", "text": "I drink green tea every morning.", "kind": "fact"})
        r["list"] = await call(session, "list_memories", {"user_id": "dora", "limit": 10, "cursor": None, "kind": None})
        r["search"] = await call(session, "search_memory", {"query": "Which mountain do I like best?", "user_id": "dora", "k": 3})
        r["document"] = await call(session, "ingest_document", {"title": "Lighthouses", "text": data["document"]})
        r["document_search"] = await call(session, "search_memory", {"query": "How far is the Hellisøy light visible?", "k": 3})
        r["chat"] = await call(session, "chat", {"user_id": "dora", "message": "Which mountain is my favourite?", "max_tokens": 12, "temperature": 0})
        r["delete"] = await call(session, "delete_memory", {"id": r["tea"]["structured"]["id"]})
        r["after_delete"] = await call(session, "list_memories", {"user_id": "dora", "limit": 10})
        r["delete_again"] = await call(session, "delete_memory", {"id": r["tea"]["structured"]["id"]})
        r["no_user"] = await call(session, "add_memory", {"text": "no owner"})
        r["bad_kind"] = await call(session, "add_memory", {"user_id": "dora", "text": "x", "kind": "dream"})
        r["no_id"] = await call(session, "delete_memory", {})
        r["nested_query"] = await call(session, "list_memories", {"user_id": {"a": 1}})
        r["traversal"] = await call(session, "delete_memory", {"id": "../../v1/memories?user_id=dora"})
        try:
            await session.call_tool("forget_everything", {})
            r["unknown_tool"] = "accepted"
        except Exception as e:
            r["unknown_tool"] = type(e).__name__ + ": " + str(e)
        r["final_list"] = await call(session, "list_memories", {"user_id": "dora", "limit": 10})
        return r
    report["acme"] = await session_run("acme-key", acme)

    async def globex(session):
        r = {}
        r["list"] = await call(session, "list_memories", {"user_id": "dora"})
        r["search"] = await call(session, "search_memory", {"query": "mountain", "user_id": "dora"})
        r["delete"] = await call(session, "delete_memory", {"id": data["probe"]})
        return r

    async def probe_id(session):
        listed = await call(session, "list_memories", {"user_id": "dora"})
        return [m["id"] for m in listed["structured"]["data"] if "Galdhøpiggen" in m["text"]][0]
    data["probe"] = await session_run("acme-key", probe_id)
    report["probe"] = data["probe"]
    report["globex"] = await session_run("globex-key", globex)
    report["acme_still"] = await session_run("acme-key", lambda s: call(s, "list_memories", {"user_id": "dora"}))

    for key in (None, "wrong-key"):
        STATUSES.clear()
        try:
            await session_run(key, lambda s: s.list_tools())
            report[f"refused_{key}"] = "accepted"
        except BaseException as e:
            report[f"refused_{key}"] = {"error": repr(e), "statuses": list(STATUSES)}
    print(json.dumps(report))

asyncio.run(main())
"#;

fn texts(list: &Value) -> Vec<String> {
    list["structured"]["data"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect()
}

fn error_code(outcome: &Value) -> &str {
    assert_eq!(outcome["is_error"], true, "{outcome}");
    outcome["structured"]["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn the_official_sdk_lists_and_calls_every_tool_within_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key,globex=globex-key")]);
    server.wait_ready();
    let document = "The Hellisøy lighthouse stands on an island west of Bergen. Its light, first lit in 1855, \
                    is visible for eighteen nautical miles on a clear night.";
    let script = format!("{PRELUDE}{TOOLS_SCRIPT}");
    let report = run_client(&script, &server, &json!({ "document": document }));

    // Listed: the six tools, each with an object schema naming its fields.
    let tools = report["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["add_memory", "chat", "delete_memory", "ingest_document", "list_memories", "search_memory"]);
    for (name, tool) in tools {
        assert_eq!(tool["schema"]["type"], "object", "{name}");
        assert!(!tool["description"].as_str().unwrap().is_empty(), "{name}");
    }
    let required = |tool: &str| tools[tool]["schema"]["required"].clone();
    assert!(required("add_memory").as_array().unwrap().contains(&json!("user_id")));
    assert!(required("search_memory").as_array().unwrap().contains(&json!("query")));
    assert_eq!(required("delete_memory"), json!(["id"]));
    assert!(tools["chat"]["schema"]["properties"].get("stream").is_none());
    assert!(tools["list_memories"]["schema"]["properties"]["cursor"].is_object());
    assert!(required("list_memories").as_array().unwrap().contains(&json!("user_id")));

    let acme = &report["acme"];
    let mountain = &acme["mountain"];
    assert_eq!(mountain["is_error"], false, "{mountain}");
    assert!(mountain["structured"]["id"].is_string());
    assert_eq!(acme["again"]["structured"]["id"], acme["tea"]["structured"]["id"], "the same text is one memory");
    assert_eq!(acme["tea"]["structured"]["kind"], "fact");
    assert_eq!(texts(&acme["list"]).len(), 2, "{}", acme["list"]);

    let hits = acme["search"]["structured"]["results"].as_array().unwrap();
    assert!(hits[0]["text"].as_str().unwrap().contains("Galdhøpiggen"), "{}", acme["search"]);

    let ingested = &acme["document"];
    assert_eq!(ingested["is_error"], false, "{ingested}");
    assert_eq!(ingested["structured"]["title"], "Lighthouses");
    let hits = acme["document_search"]["structured"]["results"].as_array().unwrap();
    assert!(hits.iter().any(|h| h["text"].as_str().unwrap().contains("eighteen nautical miles")), "{hits:?}");

    // The chat tool answers from memory: the recalled mountain was in its context.
    let chat = &acme["chat"]["structured"];
    assert!(!chat["reply"].as_str().unwrap().is_empty(), "{chat}");
    assert!(chat["session_id"].is_string());
    let recalled = chat["memories"].as_array().unwrap();
    assert!(recalled.iter().any(|m| m["text"].as_str().unwrap().contains("Galdhøpiggen")), "{chat}");

    // Deleted means gone; a second delete is a tool error, not a crash.
    assert_eq!(acme["delete"]["is_error"], false, "{}", acme["delete"]);
    assert!(!texts(&acme["after_delete"]).iter().any(|t| t.contains("green tea")));
    assert_eq!(error_code(&acme["delete_again"]), "not_found");

    // Bad arguments: tool errors in the API's error shape, naming the field.
    assert_eq!(error_code(&acme["no_user"]), "invalid_request");
    assert!(acme["no_user"]["text"].as_str().unwrap().contains("user_id"), "{}", acme["no_user"]);
    assert_eq!(error_code(&acme["bad_kind"]), "invalid_request");
    assert!(acme["bad_kind"]["text"].as_str().unwrap().contains("kind"));
    assert_eq!(acme["no_id"]["structured"]["error"]["param"], "id");
    assert_eq!(error_code(&acme["nested_query"]), "invalid_request");
    // An id cannot climb out of its path segment into another route.
    assert_eq!(error_code(&acme["traversal"]), "not_found");
    let unknown = acme["unknown_tool"].as_str().unwrap();
    assert!(unknown.contains("no tool named") && unknown.contains("forget_everything"), "{unknown}");
    // None of that touched what was stored: the mountain and the chat's episode remain.
    let left = texts(&acme["final_list"]);
    assert!(left.iter().any(|t| t.contains("Galdhøpiggen")), "{left:?}");
    assert_eq!(left, texts(&acme["after_delete"]));

    // Another tenant sees none of it and cannot delete it.
    let globex = &report["globex"];
    assert_eq!(texts(&globex["list"]), Vec::<String>::new());
    assert_eq!(globex["search"]["structured"]["results"], json!([]), "{}", globex["search"]);
    assert_eq!(error_code(&globex["delete"]), "not_found");
    assert!(texts(&report["acme_still"]).iter().any(|t| t.contains("Galdhøpiggen")));

    // No key, or a wrong one: the connection is refused before any tool runs.
    for refused in [&report["refused_None"], &report["refused_wrong-key"]] {
        assert_eq!(refused["statuses"], json!([401]), "{refused}");
    }
    server.terminate();
}

#[test]
fn the_endpoint_refuses_what_is_not_mcp_in_the_api_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } },
    });
    let (status, body) = server.call("POST", "/mcp", None, Some(&initialize));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = server.call("POST", "/mcp", Some("not-a-key"), Some(&initialize));
    assert_eq!(status, 401);
    // Stateless: only POST; the others are 405 in the JSON error shape.
    for method in ["GET", "DELETE", "PUT"] {
        let (status, body) = server.call(method, "/mcp", Some("acme-key"), None);
        assert_eq!(status, 405, "{method}");
        assert!(body["error"]["code"].is_string(), "{method}: {body}");
    }
    // Not JSON-RPC: a 4xx, and the server carries on.
    let (status, _) = server.call("POST", "/mcp", Some("acme-key"), Some(&json!({ "hello": "world" })));
    assert!((400..500).contains(&status), "{status}");
    let (status, _, _) = server.get("/healthz");
    assert_eq!(status, 200);
    server.terminate();
}
