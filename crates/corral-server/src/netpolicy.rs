//! The network policy's operations: apply a new generation, show the one in force with what
//! it lets flow between the deployed services, diff two generations (or a draft), roll back,
//! and test one connection. The pure rules are `corral_policy`; the hosts get each new
//! generation from the overlay sync (`overlay`), which enforces it with the name table.

use std::collections::BTreeMap;

use corral_policy::{Action, DecidedBy, Document, Endpoint, Traffic, Workload};
use corral_proto::api::{
    FlowChange, FlowView, NetworkPolicyView, PolicyDiffRequest, PolicyDiffView,
    PolicyGenerationView, PolicyTestAnswer, PolicyTestRequest,
};

use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{Environment, PolicyRow};
use crate::time_fmt::{now_unix, rfc3339};

/// Most service pairs a view lists.
const MAX_FLOWS: usize = 10_000;

async fn environment(state: &AppState, name: &str) -> Result<Environment> {
    state
        .store
        .environment_by_name(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no environment {name:?}; see `corral env ls`")))
}

fn unreadable(e: crate::store::StoreError) -> Error {
    Error::Refused(format!("{e}; hosts keep enforcing what they have"))
}

/// What every host enforces (the environment's rules and each stack's own), and the
/// environment's generation (`None`: none applied).
async fn effective(state: &AppState, env: &Environment) -> Result<(Option<i64>, Document)> {
    let (generation, doc) = crate::overlay::effective_policy(state, &env.id)
        .await
        .map_err(unreadable)?;
    Ok((
        (generation > 0).then_some(generation),
        doc.unwrap_or_default(),
    ))
}

/// The stacks' own rules added to `doc`.
async fn with_stack_rules(state: &AppState, env: &Environment, doc: &Document) -> Result<Document> {
    crate::overlay::with_stack_rules(state, &env.id, doc)
        .await
        .map_err(unreadable)
}

/// A stored generation's checked document. One that no longer reads stops the operation
/// (fail closed), naming the generation and what to do.
fn document_of(row: &PolicyRow) -> Result<Document> {
    serde_json::from_str(&row.policy).map_err(|e| {
        Error::Refused(format!(
            "the network policy's generation {} cannot be read ({e}); hosts keep enforcing what they have until a policy is applied again with `corral policy apply`",
            row.generation
        ))
    })
}

/// The deployed services with their labels. Labels that do not read are an error.
async fn services(state: &AppState, env: &Environment) -> Result<Vec<Workload>> {
    let rows = state.store.service_labels(&env.id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (stack, service, labels) in rows {
        let labels: BTreeMap<String, String> = serde_json::from_str(&labels).map_err(|e| {
            Error::Refused(format!(
                "the labels of service {stack}/{service} cannot be read ({e}); deploy the stack again"
            ))
        })?;
        out.push(Workload {
            stack,
            service,
            labels,
        });
    }
    Ok(out)
}

fn parse(text: &str) -> Result<Document> {
    corral_policy::parse(text)
        .map_err(|e| Error::invalid(format!("the policy document is refused: {e}")))
}

fn describe_by(doc: &Document, by: DecidedBy) -> String {
    match by {
        DecidedBy::Rule(id) => doc.describe(id),
        DecidedBy::Default(direction) => {
            let action = match direction {
                corral_policy::Direction::EastWest => doc.default,
                corral_policy::Direction::Ingress => doc.ingress,
                corral_policy::Direction::Egress => doc.egress,
            };
            format!("no rule matched: `{direction}: {action}`")
        }
        DecidedBy::NotGoverned => "neither end is a stack container: not governed".into(),
    }
}

fn flow_views(doc: &Document, services: &[Workload]) -> (Vec<FlowView>, usize) {
    let flows = corral_policy::flows(doc, services, MAX_FLOWS);
    let total = services.len() * services.len();
    let views = flows
        .into_iter()
        .map(|f| {
            let mut why: Vec<String> = f.allowed_by.iter().map(|r| doc.describe(*r)).collect();
            if f.allowed_by.is_empty() || doc.default == Action::Allow {
                why.insert(0, format!("default: {}", doc.default));
            }
            let mut reason = why.join(", ");
            if !f.denied_by.is_empty() {
                let denied: Vec<String> = f.denied_by.iter().map(|r| doc.describe(*r)).collect();
                reason.push_str(&format!("; closed by {}", denied.join(", ")));
            }
            FlowView {
                from: f.from.to_string(),
                to: f.to.to_string(),
                access: f.access.to_string(),
                allowed: f.access,
                reason,
            }
        })
        .collect::<Vec<_>>();
    let left_out = total - views.len();
    (views, left_out)
}

/// `corral policy show`.
pub async fn show(state: &AppState, env: &str) -> Result<NetworkPolicyView> {
    let env = environment(state, env).await?;
    let row = state.store.network_policy(&env.id, None).await?;
    let services = services(state, &env).await?;
    let doc = row.as_ref().map(document_of).transpose()?;
    let (_, effective) = effective(state, &env).await?;
    let (flows, flows_left_out) = flow_views(&effective, &services);
    let history = state
        .store
        .network_policy_history(&env.id)
        .await?
        .into_iter()
        .map(|(generation, at)| PolicyGenerationView {
            generation,
            applied_at: rfc3339(at),
        })
        .collect();
    Ok(NetworkPolicyView {
        environment: env.name,
        generation: row.as_ref().map(|r| r.generation),
        document: row.as_ref().map(|r| r.document.clone()).unwrap_or_default(),
        warnings: corral_policy::unmatched(&effective, &services),
        services,
        policy: doc,
        applied_at: row.map(|r| rfc3339(r.created_at)),
        flows,
        flows_left_out,
        history,
    })
}

async fn store_generation(
    state: &AppState,
    env: &Environment,
    text: &str,
    doc: &Document,
    what: &str,
) -> Result<i64> {
    let json = serde_json::to_string(doc).map_err(Error::internal)?;
    let generation = state
        .store
        .insert_network_policy(&env.id, text, &json, now_unix())
        .await?;
    state
        .record_event(
            "network_policy_applied",
            None,
            &format!(
                "environment {}: network policy generation {generation} ({what})",
                env.name
            ),
        )
        .await;
    state.overlay.wake();
    Ok(generation)
}

/// `corral policy apply`: a new generation (the previous ones are kept), pushed to every host
/// of the environment.
pub async fn apply(state: &AppState, env_name: &str, text: &str) -> Result<NetworkPolicyView> {
    let env = environment(state, env_name).await?;
    let doc = parse(text)?;
    store_generation(state, &env, text, &doc, "applied").await?;
    show(state, env_name).await
}

/// `corral policy rollback`: applies an earlier generation again, as a new generation (so
/// history only grows and every host sees a change).
pub async fn rollback(
    state: &AppState,
    env_name: &str,
    generation: Option<i64>,
) -> Result<NetworkPolicyView> {
    let env = environment(state, env_name).await?;
    let current = state
        .store
        .network_policy(&env.id, None)
        .await?
        .ok_or_else(|| Error::Conflict("no network policy was ever applied here".into()))?;
    let target = generation.unwrap_or(current.generation - 1);
    let row = state
        .store
        .network_policy(&env.id, Some(target))
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "generation {target} is not kept (see `corral policy show` for the generations kept)"
            ))
        })?;
    let doc = document_of(&row)?;
    store_generation(
        state,
        &env,
        &row.document,
        &doc,
        &format!("rolled back to generation {target}"),
    )
    .await?;
    show(state, env_name).await
}

fn endpoint<'a>(
    what: &str,
    text: &str,
    services: &'a [Workload],
    range: Option<corral_policy::Cidr>,
) -> Result<Endpoint<'a>> {
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        if range.is_some_and(|r| r.contains(ip)) {
            return Err(Error::invalid(format!(
                "{what}: {ip} is in the overlay range; name the service as STACK/SERVICE"
            )));
        }
        return Ok(Endpoint::Outside(ip));
    }
    let Some((stack, service)) = text.split_once('/') else {
        return Err(Error::invalid(format!(
            "{what}: {text:?} is neither STACK/SERVICE nor an IPv4 address"
        )));
    };
    services
        .iter()
        .find(|w| w.stack == stack && w.service == service)
        .map(Endpoint::Replica)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "{what}: no service {service:?} in a stack {stack:?} of this environment (`corral stack ls`)"
            ))
        })
}

/// `corral policy test`.
pub async fn test(
    state: &AppState,
    env_name: &str,
    req: &PolicyTestRequest,
) -> Result<PolicyTestAnswer> {
    let env = environment(state, env_name).await?;
    let (doc, generation) = match &req.document {
        Some(text) => (with_stack_rules(state, &env, &parse(text)?).await?, None),
        None => {
            let (generation, doc) = effective(state, &env).await?;
            (doc, generation)
        }
    };
    let traffic: Traffic = req
        .traffic
        .parse()
        .map_err(|e| Error::invalid(format!("--port: {e}")))?;
    let services = services(state, &env).await?;
    let range = state
        .store
        .overlay_env(&env.id)
        .await?
        .and_then(|o| o.overlay_cidr.parse().ok());
    let from = endpoint("--from", &req.from, &services, range)?;
    let to = endpoint("--to", &req.to, &services, range)?;
    let decision = corral_policy::evaluate(&doc, &from, &to, traffic);
    Ok(PolicyTestAnswer {
        action: decision.action,
        decided_by: describe_by(&doc, decision.by),
        rule: match decision.by {
            DecidedBy::Rule(id) => Some(id),
            _ => None,
        },
        generation,
    })
}

/// `corral policy diff`: what changes for the deployed services.
pub async fn diff(
    state: &AppState,
    env_name: &str,
    req: &PolicyDiffRequest,
) -> Result<PolicyDiffView> {
    let env = environment(state, env_name).await?;
    let current = state.store.network_policy(&env.id, None).await?;
    let env_id = env.id.as_str();
    let load = |g: i64| async move {
        match state.store.network_policy(env_id, Some(g)).await? {
            Some(row) => document_of(&row),
            None => Err(Error::NotFound(format!(
                "generation {g} is not kept (see `corral policy show`)"
            ))),
        }
    };
    let (new, new_name, default_old) = match &req.document {
        Some(text) => (
            parse(text)?,
            "the document given".to_owned(),
            current.as_ref().map(|r| r.generation),
        ),
        None => {
            let row = current
                .as_ref()
                .ok_or_else(|| Error::Conflict("no network policy was ever applied here".into()))?;
            (
                document_of(row)?,
                format!("generation {}", row.generation),
                Some(row.generation - 1).filter(|g| *g > 0),
            )
        }
    };
    let old_generation = req.from.or(default_old);
    let (old, old_name) = match old_generation {
        Some(g) => (load(g).await?, format!("generation {g}")),
        None => (Document::default(), "none".to_owned()),
    };
    let old = with_stack_rules(state, &env, &old).await?;
    let new = with_stack_rules(state, &env, &new).await?;
    let services = services(state, &env).await?;
    let mut changes = Vec::new();
    for a in &services {
        for b in &services {
            let before = corral_policy::flow(&old, a, b).access;
            let after = corral_policy::flow(&new, a, b).access;
            if before != after && changes.len() < MAX_FLOWS {
                changes.push(FlowChange {
                    from: a.to_string(),
                    to: b.to_string(),
                    before: before.to_string(),
                    after: after.to_string(),
                });
            }
        }
    }
    Ok(PolicyDiffView {
        from: old_name,
        to: new_name,
        changes,
        documents_differ: old != new,
    })
}

/// An environment's services and what its policy lets flow between them (what `corral
/// diagram --view services`, the firewall's Markdown and the web UI draw).
pub fn service_map(view: &NetworkPolicyView) -> corral_firewall::ServiceMap {
    let policy = match (&view.generation, &view.policy) {
        (Some(g), Some(doc)) => format!(
            "network policy generation {g} (default: {}, ingress: {}, egress: {})",
            doc.default, doc.ingress, doc.egress
        ),
        _ => "no network policy: all traffic allowed".to_owned(),
    };
    corral_firewall::ServiceMap {
        environment: view.environment.clone(),
        policy,
        services: view
            .services
            .iter()
            .map(|w| corral_firewall::ServiceBox {
                stack: w.stack.clone(),
                service: w.service.clone(),
                labels: w
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
        flows: view
            .flows
            .iter()
            .map(|f| corral_firewall::ServiceFlow {
                from: f.from.clone(),
                to: f.to.clone(),
                access: f.access.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
    }
}
