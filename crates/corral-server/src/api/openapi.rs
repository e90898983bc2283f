//! The `/v1/` routes and their OpenAPI document, made together: each `routes!` registers the
//! handlers at the paths of their own `#[utoipa::path]` annotations and adds those operations to
//! the document, so no route can be served undocumented or documented at another path. The
//! document is served at `/v1/openapi.json`.

use axum::extract::DefaultBodyLimit;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, RefOr, Required, SecurityRequirement};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::{
    audit, containers, doctor, environments, events, hosts, images, netpolicy, network, servers,
    stacks, tokens, ui, users,
};
use crate::state::AppState;
use corral_proto::api::ErrorBody;
use std::sync::Arc;

/// Every `/v1/` route, documented.
pub(super) fn router() -> OpenApiRouter<Arc<AppState>> {
    let up_limit = DefaultBodyLimit::max(crate::stacks::MAX_UP_BODY_BYTES);
    let policy_limit = DefaultBodyLimit::max(super::netpolicy::MAX_POLICY_BODY_BYTES);
    let context_limit = DefaultBodyLimit::max(
        usize::try_from(corral_proto::MAX_BUILD_CONTEXT_BYTES).unwrap_or(usize::MAX),
    );
    OpenApiRouter::new()
        .routes(routes!(super::connect))
        .routes(routes!(ui::live))
        .routes(routes!(ui::diagram))
        .routes(routes!(ui::firewall))
        .routes(routes!(environments::list, environments::create))
        .routes(routes!(environments::remove))
        .routes(routes!(environments::rotate_key))
        .routes(routes!(environments::set_overlay_mode))
        .routes(routes!(images::show_admission, images::apply_admission))
        .routes(routes!(images::test_admission).layer(up_limit))
        .routes(routes!(netpolicy::show, netpolicy::apply).layer(policy_limit))
        .routes(routes!(netpolicy::diagram))
        .routes(routes!(netpolicy::rollback))
        .routes(routes!(netpolicy::diff).layer(policy_limit))
        .routes(routes!(netpolicy::test).layer(policy_limit))
        .routes(routes!(images::list_registries, images::put_registry))
        .routes(routes!(images::remove_registry))
        .routes(routes!(images::has_context, images::put_context).layer(context_limit))
        .routes(routes!(
            images::host_images,
            images::pull,
            images::remove_image
        ))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(hosts::list))
        .routes(routes!(servers::list))
        .routes(routes!(hosts::get, hosts::remove))
        .routes(routes!(doctor::run))
        .routes(routes!(network::apply_firewall))
        .routes(routes!(containers::list, containers::run))
        .routes(routes!(containers::get, containers::remove))
        .routes(routes!(containers::start))
        .routes(routes!(containers::stop))
        .routes(routes!(containers::logs))
        .routes(routes!(stacks::list, stacks::up).layer(up_limit))
        .routes(routes!(stacks::get, stacks::down))
        .routes(routes!(stacks::scale))
        .routes(routes!(stacks::logs))
        .routes(routes!(stacks::secrets))
        .routes(routes!(stacks::progress))
        .routes(routes!(events::list))
        .routes(routes!(network::topology))
        .routes(routes!(users::login))
        .routes(routes!(users::whoami))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::remove))
        .routes(routes!(users::set_password))
        .routes(routes!(users::set_role, users::remove_role))
        .routes(routes!(users::keys, users::create_key))
        .routes(routes!(users::revoke_key))
        .routes(routes!(audit::recent))
        .routes(routes!(audit::export))
        .routes(routes!(audit::verify))
}

/// Errors every route may answer, each with an [`ErrorBody`] that says what to do. Listed on
/// every operation rather than per handler: they come from the shared extractors (bad JSON,
/// over-size bodies, authentication, the rate limit) as much as from the handlers.
const ERRORS: &[(u16, &str)] = &[
    (400, "The request is malformed or a value is refused"),
    (
        401,
        "No valid credentials (an API key as a bearer token, or a web session)",
    ),
    (403, "The caller's role does not allow this"),
    (404, "No such object, or not one the caller may see"),
    (405, "The route does not take this method"),
    (409, "The object exists already or is in use"),
    (413, "The body is larger than this route accepts"),
    (415, "The body is not JSON"),
    (
        422,
        "The request is well formed but refused (policy, placement, limits)",
    ),
    (429, "Too many attempts; retry later"),
    (502, "The host's agent answered with an error"),
    (
        503,
        "The server cannot serve this now (its datastore or a dependency is unavailable)",
    ),
    (504, "The host's agent did not answer in time"),
];

/// The document as served: the operations `router` collected, with the API's description, its
/// way to authenticate, the environment header and the error answers added.
pub(super) fn finish(mut doc: OpenApi) -> Vec<u8> {
    doc.info = InfoBuilder::new()
        .title("corral API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The API of a corral server: hosts, stacks, containers, images, network policy, \
             users and audit. Every route answers JSON errors as ErrorBody.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "api_key".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key (`CORRAL_API_KEY`, `corral key create`, `POST /v1/login`)",
                ))
                .build(),
        ),
    );
    let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    ErrorBody::schemas(&mut schemas);
    components.schemas.extend(schemas);
    // The web UI's session cookie (with its CSRF header) reaches the same routes; it is the
    // page's own way in, not one for API clients, so the document names only the key.
    doc.security = Some(vec![SecurityRequirement::new(
        "api_key",
        Vec::<String>::new(),
    )]);
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_errors(op);
            add_environment_header(op);
        }
    }
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

fn add_errors(op: &mut Operation) {
    let mut answers = ResponsesBuilder::new();
    for (status, description) in ERRORS {
        answers = answers.response(
            status.to_string(),
            ResponseBuilder::new().description(*description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            ),
        );
    }
    for (status, response) in answers.build().responses {
        op.responses.responses.entry(status).or_insert(response);
    }
}

/// The header that narrows a key with roles in several environments to one of them.
fn add_environment_header(op: &mut Operation) {
    let header = ParameterBuilder::new()
        .name(corral_proto::api::ENVIRONMENT_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Act in this environment only (a key's other roles do not apply)",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(63)),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(header);
}
