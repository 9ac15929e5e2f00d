//! The API's OpenAPI 3.1 document and its docs page.
//!
//! The document is derived from the code: each handler's `#[utoipa::path]` names its
//! route, parameters and responses, and the request and response types derive their
//! schemas, so the JSON a handler writes and the schema it is documented with are one
//! type. Routes are registered through `utoipa-axum`, which adds a route and its
//! documentation together. What is true of every route — the bearer key, the error shape
//! — is added here once, by [`Conventions`].
//!
//! `/openapi.json` serves the document, `/docs` Swagger UI reading it; the page's files
//! are compiled into the binary, so it loads nothing from elsewhere.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorResponse;

/// The document's fixed parts; the paths come from the router (see [`super::router`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "engram",
        description = "Long-term memory for language models: chat with persistent memory, a knowledge base of \
                       documents, and direct access to memories. Every `/v1` route needs `Authorization: Bearer \
                       <key>` when keys are configured; each key belongs to a tenant, and every call sees only \
                       its tenant's data.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "chat", description = "Chat turns with long-term memory, and sessions"),
        (name = "memories", description = "A user's long-term memories: add, list, edit, search, erase"),
        (name = "documents", description = "The knowledge base: documents cut into searchable chunks"),
        (name = "models", description = "The models themselves, OpenAI-compatible, no memory involved"),
        (name = "mcp", description = "The memory tools for agents, over the Model Context Protocol"),
        (name = "operations", description = "Probes, metrics and this document"),
    ),
    components(schemas(ErrorResponse)),
)]
pub struct ApiDoc;

/// The document of `routes`: their paths with the conventions applied (after the routes
/// are added, which an `#[openapi(modifiers)]` would run before).
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    Conventions.modify(&mut doc);
    doc
}

/// The security scheme's name in the document.
const BEARER: &str = "api_key";

/// Routes outside `/v1` (and `/mcp`) need no key: probes, metrics and the docs.
fn needs_key(path: &str) -> bool {
    path.starts_with("/v1/") || path == super::mcp::PATH
}

/// What holds for every route, added once: the bearer scheme, no key on the open
/// routes, and the error responses every route can give (any failure has the one JSON
/// error shape; 401 on keyed routes; 503 while starting).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `auth.keys`; it selects the tenant"))
                    .build(),
            ),
        );
        doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        doc.paths.paths.insert("/docs".to_owned(), docs_page_item());
        doc.paths.paths.insert(super::mcp::PATH.to_owned(), super::mcp::path_item());
        for (path, item) in doc.paths.paths.iter_mut() {
            let keyed = needs_key(path);
            for op in operations(item) {
                if !keyed {
                    op.security = Some(Vec::new());
                }
                let responses = &mut op.responses.responses;
                if keyed {
                    responses.entry("401".into()).or_insert_with(|| error("Missing or unknown API key"));
                    responses
                        .entry("503".into())
                        .or_insert_with(|| error("Still starting, or the store cannot take writes now"));
                }
                if path != "/healthz" && path != "/readyz" {
                    responses.entry("default".into()).or_insert_with(|| {
                        error("Any other failure: bad input (400), a body too large (413), overload (429)…")
                    });
                }
            }
        }
    }
}

/// The operations of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// A response with the error body.
fn error(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorResponse"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

/// `/docs`, served by Swagger UI's router rather than a handler of ours.
fn docs_page_item() -> PathItem {
    let html = ContentBuilder::new().build();
    let ok = ResponseBuilder::new().description("Swagger UI, reading /openapi.json").content("text/html", html);
    let op = OperationBuilder::new()
        .tag("operations")
        .summary(Some("This API in a browser (no key needed)"))
        .response("200", ok)
        .build();
    PathItem::new(HttpMethod::Get, op)
}

/// The document as served, set once the router is built.
static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Records the finished document for `/openapi.json`.
pub fn publish(doc: &utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| doc.to_json().expect("the OpenAPI document serialises"));
}

/// This document (no key needed).
#[utoipa::path(get, operation_id = "openapi_document", path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
))]
pub async fn document() -> impl IntoResponse {
    let body = DOCUMENT.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Swagger UI at `/docs`, reading `/openapi.json`.
pub fn docs_page<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")).into()
}
