//! An MCP (Model Context Protocol) server at `/mcp`, over the streamable HTTP transport,
//! for agents that reach memory through tools.
//!
//! Each tool is one REST operation, called through the same router the REST clients use:
//! the arguments become that operation's path, query or JSON body, the caller's
//! `Authorization` header goes with them, and the answer's JSON comes back as the tool's
//! result (an error body as a tool error). So a tool validates, authorises and answers
//! exactly as its route does, and its input schema is the route's own, read from the
//! OpenAPI document (see [`super::openapi`]).
//!
//! The transport runs stateless (no MCP sessions, JSON answers): any node can take any
//! request, as with the REST API. The key is checked before a message is read.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, request::Parts, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value};
use tower::ServiceExt;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder};

use super::auth::Tenant;
use super::error::ApiError;
use super::AppState;
use crate::config::ServerConfig as HttpConfig;

/// Where the MCP endpoint is served.
pub const PATH: &str = "/mcp";

/// A tool: the REST operation it calls, and what it fixes there.
struct ToolRoute {
    name: &'static str,
    description: &'static str,
    method: Method,
    /// The OpenAPI path, `{name}` marking a path parameter.
    path: &'static str,
    /// Body fields the tool sets itself (and hides from its schema).
    fixed: &'static [(&'static str, bool)],
}

/// The tools, each one REST operation.
fn tool_routes() -> Vec<ToolRoute> {
    vec![
        ToolRoute {
            name: "add_memory",
            description: "Store a memory for a user: a fact, a preference or an event, in their words. The same \
                          text stored before is returned as it is. `supersedes` retires older memories it updates.",
            method: Method::POST,
            path: "/v1/memories",
            fixed: &[],
        },
        ToolRoute {
            name: "search_memory",
            description: "Find a user's memories (and the shared knowledge base) relevant to a query, by meaning \
                          and by words, best first. Only current memories unless `include_superseded` or `as_of`.",
            method: Method::POST,
            path: "/v1/memories/search",
            fixed: &[],
        },
        ToolRoute {
            name: "list_memories",
            description: "List a user's memories, newest first, a page at a time (`cursor` takes the previous \
                          page's `next_cursor`).",
            method: Method::GET,
            path: "/v1/memories",
            fixed: &[],
        },
        ToolRoute {
            name: "delete_memory",
            description: "Delete one memory by its id, for good. A memory it had superseded becomes current again.",
            method: Method::DELETE,
            path: "/v1/memories/{id}",
            fixed: &[],
        },
        ToolRoute {
            name: "ingest_document",
            description: "Add a document (plain text, or HTML with `mime: text/html`) to the knowledge base, cut \
                          into searchable chunks; a large one is ingested by a job whose id is returned.",
            method: Method::POST,
            path: "/v1/documents",
            fixed: &[],
        },
        ToolRoute {
            name: "chat",
            description: "One chat turn with long-term memory: the reply draws on the user's memories, and the \
                          exchange is remembered. Pass the returned `session_id` to continue a conversation.",
            method: Method::POST,
            path: "/v1/chat",
            fixed: &[("stream", false)],
        },
    ]
}

/// The MCP endpoint: `api` is the REST router the tools call, `doc` the OpenAPI document
/// their schemas come from.
pub fn routes(api: Router, doc: &Value, config: &HttpConfig, state: Arc<AppState>) -> Router<Arc<AppState>> {
    let server = Arc::new(McpServer::new(api, doc));
    // Stateless with JSON answers. Host and Origin are checked for every route by the
    // browser guard (see `middleware`), so the transport's own loopback-only host check
    // would only refuse a server bound to a public address.
    let transport = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .with_max_request_body_bytes(config.body_limit_bytes);
    let service = StreamableHttpService::new(
        move || Ok(server.as_ref().clone()),
        Arc::new(NeverSessionManager::default()),
        transport,
    );
    Router::new().route_service(PATH, service).route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Refuses a request without a valid key (when keys are configured) before MCP reads
/// it: the REST handlers' own [`Tenant`] extractor does the refusing.
async fn authenticate(_: Tenant, req: Request, next: Next) -> Response {
    next.run(req).await
}

/// `/mcp` in the OpenAPI document (served by the MCP transport, not by a handler).
pub fn path_item() -> PathItem {
    let message = || ContentBuilder::new().schema(Some(ObjectBuilder::new())).build();
    let op = OperationBuilder::new()
        .tag("mcp")
        .operation_id(Some("mcp"))
        .summary(Some("Model Context Protocol, streamable HTTP transport (stateless)"))
        .description(Some(
            "A JSON-RPC message of MCP. Tools: add_memory, search_memory, list_memories, delete_memory, \
             ingest_document, chat; each calls the REST operation of the same purpose with the caller's key.",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", message())
                .required(Some(utoipa::openapi::Required::True))
                .build(),
        ))
        .response(
            "200",
            ResponseBuilder::new().description("The JSON-RPC answer").content("application/json", message()),
        )
        .response("202", ResponseBuilder::new().description("A notification or response was accepted"))
        .build();
    PathItem::new(HttpMethod::Post, op)
}

/// The MCP server: the tools and the router they call.
#[derive(Clone)]
struct McpServer {
    api: Router,
    tools: Arc<Vec<(Tool, ToolRoute)>>,
}

impl McpServer {
    fn new(api: Router, doc: &Value) -> Self {
        let tools = tool_routes()
            .into_iter()
            .map(|route| {
                let schema = input_schema(doc, &route);
                (Tool::new(route.name, route.description, schema), route)
            })
            .collect();
        Self { api, tools: Arc::new(tools) }
    }

    /// Calls `route` with `args`, as the caller (`authorization`).
    async fn call(
        &self,
        route: &ToolRoute,
        mut args: JsonObject,
        authorization: Option<HeaderValue>,
    ) -> CallToolResult {
        let request = match build_request(route, &mut args, authorization) {
            Ok(request) => request,
            Err(e) => return tool_error(e),
        };
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = match axum::body::to_bytes(response.into_body(), usize::MAX).await {
            Ok(body) => body,
            Err(e) => return tool_error(ApiError::internal(format!("reading the answer: {e}"))),
        };
        let json = serde_json::from_slice::<Value>(&body).ok();
        match (status.is_success(), json) {
            (true, Some(json)) => CallToolResult::structured(json),
            (true, None) => CallToolResult::success(vec![ContentBlock::text(format!("done ({status})"))]),
            (false, Some(json)) => CallToolResult::structured_error(json),
            (false, None) => {
                CallToolResult::error(vec![ContentBlock::text(format!("{status}: {}", String::from_utf8_lossy(&body)))])
            }
        }
    }
}

/// A tool error in the API's error shape.
fn tool_error(error: ApiError) -> CallToolResult {
    CallToolResult::structured_error(serde_json::to_value(error.into_body()).unwrap_or_default())
}

/// The REST request a tool call makes: path parameters from `args`, then the rest as
/// the query (GET, DELETE) or the JSON body.
fn build_request(
    route: &ToolRoute,
    args: &mut JsonObject,
    authorization: Option<HeaderValue>,
) -> Result<Request, ApiError> {
    let mut path = route.path.to_owned();
    for name in path_parameters(route.path) {
        let value = match args.remove(&name) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err(ApiError::invalid_field(&name, "must be a non-empty string")),
            None => return Err(ApiError::invalid_field(&name, "is required")),
        };
        path = path.replace(&format!("{{{name}}}"), &utf8_percent_encode(&value, NON_ALPHANUMERIC).to_string());
    }
    for (field, value) in route.fixed {
        args.insert((*field).to_owned(), Value::Bool(*value));
    }
    let mut builder = Request::builder().method(route.method.clone());
    if let Some(key) = authorization {
        builder = builder.header(header::AUTHORIZATION, key);
    }
    let body = if route.method == Method::GET || route.method == Method::DELETE {
        // An agent sends null for an optional field it leaves out; a query has no null.
        args.retain(|_, value| !value.is_null());
        let query = serde_urlencoded::to_string(&*args)
            .map_err(|e| ApiError::bad_request(format!("arguments must be plain values here: {e}")))?;
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        Body::empty()
    } else {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
        Body::from(Value::Object(std::mem::take(args)).to_string())
    };
    builder.uri(path).body(body).map_err(|e| ApiError::bad_request(format!("arguments make no valid request: {e}")))
}

/// The `{name}` parameters of an OpenAPI path.
fn path_parameters(path: &str) -> Vec<String> {
    path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(str::to_owned).collect()
}

/// A tool's input schema: its operation's path and query parameters and JSON body
/// fields, as one object, with the component schemas it refers to under `$defs`.
fn input_schema(doc: &Value, route: &ToolRoute) -> JsonObject {
    let operation = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
    let mut properties = Map::new();
    let mut required = Vec::new();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let Some(name) = parameter["name"].as_str() else { continue };
        let mut schema = parameter["schema"].clone();
        if let (Some(object), Some(text)) = (schema.as_object_mut(), parameter["description"].as_str()) {
            object.entry("description").or_insert_with(|| text.into());
        }
        properties.insert(name.to_owned(), schema);
        if parameter["required"] == Value::Bool(true) || parameter["in"] == "path" {
            required.push(Value::from(name));
        }
    }
    let body = resolve(doc, &operation["requestBody"]["content"]["application/json"]["schema"]);
    let mut closed = false;
    if let Some(body) = body {
        for (name, schema) in body["properties"].as_object().into_iter().flatten() {
            properties.insert(name.clone(), schema.clone());
        }
        required.extend(body["required"].as_array().into_iter().flatten().cloned());
        closed = body["additionalProperties"] == Value::Bool(false);
    }
    for (field, _) in route.fixed {
        properties.remove(*field);
        required.retain(|r| r != field);
    }
    let mut schema = Map::new();
    schema.insert("type".into(), "object".into());
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    if closed {
        schema.insert("additionalProperties".into(), false.into());
    }
    let mut schema = Value::Object(schema);
    let defs = referenced_components(doc, &schema);
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    rewrite_refs(&mut schema);
    match schema {
        Value::Object(object) => object,
        _ => unreachable!("built as an object"),
    }
}

/// The schema itself when `schema` is a `$ref` to a component.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    match schema["$ref"].as_str() {
        Some(reference) => doc["components"]["schemas"].get(reference.strip_prefix(COMPONENTS)?),
        None => (!schema.is_null()).then_some(schema),
    }
}

const COMPONENTS: &str = "#/components/schemas/";

/// Every component `schema` refers to, directly or through another.
fn referenced_components(doc: &Value, schema: &Value) -> Map<String, Value> {
    let mut found = Map::new();
    let mut pending = vec![schema.clone()];
    while let Some(value) = pending.pop() {
        let mut names = Vec::new();
        collect_refs(&value, &mut names);
        for name in names {
            if found.contains_key(&name) {
                continue;
            }
            if let Some(component) = doc["components"]["schemas"].get(&name) {
                found.insert(name, component.clone());
                pending.push(component.clone());
            }
        }
    }
    found
}

fn collect_refs(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(name) = object.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(COMPONENTS)) {
                names.push(name.to_owned());
            }
            object.values().for_each(|v| collect_refs(v, names));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, names)),
        _ => {}
    }
}

/// Points component references at `$defs`, where [`input_schema`] puts them.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref") {
                if let Some(name) = reference.strip_prefix(COMPONENTS) {
                    *reference = format!("#/$defs/{name}");
                }
            }
            object.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("engram", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Long-term memory. Search a user's memories before answering about them, add what is worth \
                 remembering, and chat for replies that draw on memory.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.iter().map(|(tool, _)| tool.clone()).collect()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some((_, route)) = self.tools.iter().find(|(tool, _)| tool.name == request.name) else {
            return Err(ErrorData::invalid_params(format!("no tool named `{}`", request.name), None));
        };
        // The HTTP request's parts come with every message: the caller's key goes on.
        let authorization =
            context.extensions.get::<Parts>().and_then(|p| p.headers.get(header::AUTHORIZATION)).cloned();
        Ok(self.call(route, request.arguments.unwrap_or_default(), authorization).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_read_from_the_template() {
        assert_eq!(path_parameters("/v1/memories/{id}"), vec!["id".to_owned()]);
        assert!(path_parameters("/v1/memories").is_empty());
    }

    #[test]
    fn an_id_cannot_leave_its_path_segment() {
        let route = &tool_routes()[3];
        let mut args = JsonObject::new();
        args.insert("id".into(), "../search?x=1".into());
        let request = build_request(route, &mut args, None).unwrap();
        assert_eq!(request.uri().path(), "/v1/memories/%2E%2E%2Fsearch%3Fx%3D1");
        assert_eq!(request.uri().query(), None);
    }

    #[test]
    fn a_missing_path_parameter_names_itself() {
        let route = &tool_routes()[3];
        let body = build_request(route, &mut JsonObject::new(), None).unwrap_err().into_body();
        assert_eq!(body.error.param.as_deref(), Some("id"));
    }

    #[test]
    fn schemas_come_from_the_document_with_their_references() {
        let doc = serde_json::to_value(super::super::openapi_document()).unwrap();
        let add = input_schema(&doc, &tool_routes()[0]);
        assert!(add["properties"]["text"].is_object() && add["properties"]["user_id"].is_object());
        let required: Vec<&str> = add["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(required.contains(&"text") && required.contains(&"user_id"), "{required:?}");
        let text = Value::Object(add.clone()).to_string();
        assert!(!text.contains("#/components/"), "references must point into $defs: {text}");
        for reference in text.split("\"#/$defs/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(add["$defs"].get(name).is_some(), "{name} is referenced but not defined");
        }
        let chat = input_schema(&doc, &tool_routes()[5]);
        assert!(chat["properties"].get("stream").is_none(), "the tool fixes stream itself");
        let delete = input_schema(&doc, &tool_routes()[3]);
        assert_eq!(delete["required"], serde_json::json!(["id"]));
    }
}
