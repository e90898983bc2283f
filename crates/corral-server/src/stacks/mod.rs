//! Stacks: Compose files in, services with desired state stored, a reconciler that keeps the
//! hosts running them.
//!
//! - `corral_control::define` (pure): a loaded Compose project → stored service definitions.
//! - `corral_control::reconcile` (pure): one pass over one stack → actions.
//! - [`reconciler`]: the loop that gathers each pass's input and carries the actions out as
//!   `container_*` commands.
//! - this module: the operations behind the API (`up`, list, view, `scale`, `down`, logs).

pub mod reconciler;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use corral_compose as compose;
use corral_control::define::{self, ServiceDef};
use corral_control::reconcile;
use corral_control::states::{Desired, StackState, is_ready};
use corral_control::unplaced::{self, thousands};
use corral_proto::ImageCheck;
use corral_proto::api::{
    ReplicaView, ScaleRequest, ServiceView, StackSummary, StackView, UpRequest, UpResponse,
};

use crate::dispatch::{self, CallError};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{ContainerRow, ServiceRow, SetReplicas, StackRow, StackWrite};
use crate::time_fmt::{now_unix, rfc3339};

/// Largest `corral up` request: every Compose file at its limit, plus env files.
pub const MAX_UP_BODY_BYTES: usize = (compose::limits::MAX_FILES + 1)
    * compose::limits::MAX_FILE_BYTES
    + compose::limits::MAX_ENV_FILES * 64 * 1024
    // Project files, base64 (4 bytes for 3), with room for their JSON.
    + corral_proto::files::MAX_PROJECT_FILES_BYTES / 3 * 4
    + corral_proto::files::MAX_PROJECT_FILES * 512;

fn bad(message: impl Into<String>) -> Error {
    Error::invalid(message)
}

fn unprocessable(message: impl Into<String>) -> Error {
    Error::Refused(message.into())
}

/// The first [`compose::limits::MAX_ERRORS`] errors, each cut to 1 KiB, and how many more
/// there were.
fn first_errors(errors: &[String]) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(compose::limits::MAX_ERRORS)
        .map(|e| crate::text::clip(e, compose::limits::MAX_MESSAGE_BYTES).into_owned())
        .collect();
    let more = errors.len().saturating_sub(compose::limits::MAX_ERRORS);
    if more > 0 {
        lines.push(format!(
            "… and {} more errors not shown",
            thousands(more as u64)
        ));
    }
    lines.join("\n")
}

fn sources(files: &[corral_proto::api::FileBody]) -> Vec<compose::SourceFile> {
    files
        .iter()
        .map(|f| compose::SourceFile::new(f.name.clone(), f.text.clone()))
        .collect()
}

/// `corral up`: load, validate, check that the stack can be placed and that every image it
/// needs is on the hosts chosen for it, then store it in one transaction. A refused `up`
/// leaves nothing behind.
pub async fn up(state: &Arc<AppState>, req: UpRequest) -> Result<UpResponse> {
    if req.env.len() > 4096 {
        return Err(bad("too many environment variables sent (limit 4096)"));
    }
    let input = compose::Input {
        files: sources(&req.files),
        env_files: sources(&req.env_files),
        referenced_files: sources(&req.referenced_files),
        env: req.env.clone(),
        project_name: req.name.clone(),
    };
    let loaded = compose::load(&input).map_err(|e| bad(e.to_string()))?;
    // Before anything that grows with the replicas (placement, its explanations).
    let total: u64 = loaded
        .project
        .services
        .values()
        .map(|s| u64::from(s.replicas))
        .sum();
    let most = state.options.max_stack_replicas;
    if total > most {
        return Err(bad(format!(
            "stack {} asks for {} replicas in all ({} services); the limit is {} per stack. Nothing was changed",
            loaded.project.name,
            thousands(total),
            thousands(loaded.project.services.len() as u64),
            thousands(most)
        )));
    }
    if let Some(id) = &req.progress_id
        && !crate::state::progress::valid_id(id)
    {
        return Err(bad(
            "progress_id must be 16 to 64 letters, digits and dashes",
        ));
    }
    let sent = project_files(&req.project_files)?;
    let mut stack =
        define::define_with_files(&loaded.project, &sent).map_err(|e| bad(first_errors(&e)))?;
    let env_name = req.environment.clone().unwrap_or_else(|| "default".into());
    let env = state
        .store
        .environment_by_name(&env_name)
        .await?
        .ok_or_else(|| bad(format!("no environment {env_name:?}")))?;
    // A built service runs the image its recipe is pushed as (and admission judges that).
    let auths = crate::images::auths(state, &env.id).await?;
    let to_build = plan_builds(
        state,
        &loaded.project,
        &mut stack,
        &req.build_contexts,
        &auths,
    )?;
    // Admission first: a refused stack costs no placement and no registry round trip.
    let policy = crate::images::policy(state, &env.id).await?;
    let refusals: Vec<_> = stack
        .services
        .iter()
        .flat_map(|(name, _, def)| policy.refusals(name, &def.template))
        .collect();
    if !refusals.is_empty() {
        return Err(unprocessable(crate::images::refusal_text(&refusals)));
    }

    // Dry run: where would the replicas go right now? Dependencies gate starts, not
    // placement, so every service is planned as if it could start. Placement does not depend
    // on the image, so this runs before tags are resolved.
    let planned: Vec<reconcile::Service> = stack
        .services
        .iter()
        .map(|(name, replicas, def)| {
            let mut def = def.clone();
            def.depends_on.clear();
            reconcile::Service {
                name: name.clone(),
                replicas: *replicas,
                def,
                hash: String::new(),
            }
        })
        .collect();
    let existing_stack = state
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.environment_id == env.id && s.name == stack.name);
    let world = reconciler::World::gather(state, &env.id).await?;
    if let Some(why) = world.unreadable_stack(existing_stack.as_ref().map(|s| s.id.as_str())) {
        // Replacing a definition nobody can read is fine; placing beside one is not: its
        // replicas' reservations are unknown.
        return Err(Error::Refused(format!(
            "stack {} cannot be placed; nothing was changed: {why}",
            stack.name
        )));
    }
    let containers = match &existing_stack {
        Some(s) => world.replicas_of(&s.id),
        None => Vec::new(),
    };
    let others = world.others(existing_stack.as_ref().map(|s| s.id.as_str()));
    let dry = reconcile::decide(&reconcile::Input {
        now_ms: now_unix() * 1000,
        stack: &stack.name,
        removing: false,
        services: &planned,
        hosts: &world.hosts,
        containers: &containers,
        others: &others,
        in_flight: &Default::default(),
        memory: &Default::default(),
    });
    if dry.unplaced.values().any(|u| u.count > 0) {
        // Grouped by reason and bounded, however many replicas are left out.
        return Err(unprocessable(format!(
            "stack {} cannot be placed; nothing was changed: {}",
            stack.name,
            unplaced::refusal(&dry.unplaced)
        )));
    }

    // One digest everywhere: each tag is resolved once, by a host that will run it.
    let chosen = chosen_hosts(&world, &dry.actions);
    let mut built = Vec::new();
    let all_named: Vec<(String, String)> = chosen
        .iter()
        .map(|id| (id.clone(), world.host_name(id)))
        .collect();
    for p in &to_build {
        // Built on a host that runs the service (so it keeps the image it runs), else any.
        let mut named: Vec<(String, String)> = Vec::new();
        for a in &dry.actions {
            if let reconcile::Action::Run {
                service, host_id, ..
            } = a
                && *service == p.service
                && !named.iter().any(|(id, _)| id == host_id)
            {
                named.push((host_id.clone(), world.host_name(host_id)));
            }
        }
        for other in &all_named {
            if !named.contains(other) {
                named.push(other.clone());
            }
        }
        let outcome =
            crate::builds::ensure(state, &auths, &named, p, req.progress_id.as_deref()).await?;
        let (line, digest) = match outcome {
            crate::builds::Outcome::Found { digest } => (
                format!(
                    "service {}: build context unchanged, {} is already built",
                    p.service, p.tag
                ),
                digest,
            ),
            crate::builds::Outcome::Built { host, digest } => (
                format!(
                    "service {}: built on host {host} and pushed as {}",
                    p.service, p.tag
                ),
                digest,
            ),
        };
        built.push(line);
        if let Some((_, _, def)) = stack.services.iter_mut().find(|(n, _, _)| *n == p.service) {
            let tag = corral_proto::ImageRef::parse(&p.tag).map_err(Error::invalid)?;
            def.template.image = tag.pinned(&digest);
            def.template.image_source = Some(p.tag.clone());
        }
    }
    let pinned = {
        let mut templates: Vec<&mut corral_proto::ContainerSpec> = stack
            .services
            .iter_mut()
            .map(|(_, _, def)| &mut def.template)
            .collect();
        crate::images::pin(state, &auths, &chosen, &mut templates).await?
    };
    // A registry that cannot be asked now does not move a service off the digest it runs:
    // the tag keeps meaning what it meant (a new `up` resolves it again once the registry
    // answers).
    let mut pinned = pinned;
    // What the stack ran before: read once, for the digests kept and the digests changed.
    let previous: Vec<(String, ServiceDef)> = match &existing_stack {
        Some(s) => state
            .store
            .services(&s.id)
            .await?
            .iter()
            .filter_map(|row| service_def(row).map(|d| (row.name.clone(), d)))
            .collect(),
        None => Vec::new(),
    };
    let kept = keep_running_digests(&previous, &mut stack.services);
    pinned
        .unpinned
        .retain(|image, _| !kept.iter().any(|(k, _)| k == image));
    if !pinned.failed.is_empty() {
        let lines: Vec<String> = pinned
            .failed
            .iter()
            .map(|(image, why)| {
                format!("image {image} (pull_policy always) cannot be resolved: {why}")
            })
            .collect();
        return Err(unprocessable(format!(
            "nothing was changed:\n  {}",
            lines.join("\n  ")
        )));
    }
    let unpinned: Vec<_> = stack
        .services
        .iter()
        .filter_map(|(name, _, def)| policy.check_pinned(name, &def.template))
        .collect();
    if !unpinned.is_empty() {
        return Err(unprocessable(crate::images::refusal_text(&unpinned)));
    }
    let mut rows = Vec::new();
    for (i, (name, replicas, def)) in stack.services.iter().enumerate() {
        let (spec, spec_hash) = def.encode().map_err(Error::internal)?;
        rows.push(ServiceRow {
            stack_id: String::new(),
            name: name.clone(),
            spec,
            spec_hash,
            replicas: i64::from(*replicas),
            position: i as i64,
        });
    }
    let services: Vec<reconcile::Service> = stack
        .services
        .iter()
        .zip(&rows)
        .map(|((name, replicas, def), row)| reconcile::Service {
            name: name.clone(),
            replicas: *replicas,
            def: def.clone(),
            hash: row.spec_hash.clone(),
        })
        .collect();
    // Images not pinned (pull_policy never, or a registry that could not be asked) run only
    // where the host has them: check before anything is stored.
    check_images(state, &world, &services, &dry.actions, &pinned.unpinned).await?;
    let mut images = built;
    images.extend(pinned.resolved.iter().cloned());
    images.extend(digest_changes(&previous, &stack.services));

    let files: Vec<(String, bool, Vec<u8>)> = stack
        .files
        .iter()
        .map(|(digest, f)| (digest.clone(), f.secret, f.data.clone()))
        .collect();
    let labels = service_labels(&stack.services);
    let policy = stack
        .policy
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(Error::internal)?;
    let write = StackWrite {
        policy: policy.as_deref(),
        environment_id: &env.id,
        name: &stack.name,
        volumes: &stack.volumes,
        services: &rows,
        files: &files,
        labels: &labels,
    };
    let (stack_id, created, changed) = state.store.write_stack(&write, now_unix()).await?;
    // A new service (or new labels) may be one the network policy names.
    state.overlay.wake();
    state.reconciler.definition_replaced(&stack_id);
    state
        .record_event(
            if created {
                "stack_created"
            } else {
                "stack_updated"
            },
            None,
            &format!(
                "stack {} ({} services{})",
                stack.name,
                rows.len(),
                if changed.is_empty() {
                    String::new()
                } else {
                    format!("; changed: {}", changed.join(", "))
                }
            ),
        )
        .await;
    state.reconciler.wake();
    Ok(UpResponse {
        stack: stack.name,
        created,
        changed,
        warnings: loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .chain(stack.notes.iter().cloned())
            .chain(pinned.unpinned.iter().map(|(image, why)| {
                format!("image {image} ({why}): each host runs the copy it has; no digest is pinned")
            }))
            .chain(kept.iter().map(|(image, digest)| {
                format!(
                    "image {image}: its registry could not be asked; the service keeps the digest it runs, {digest}"
                )
            }))
            .collect(),
        images,
    })
}

/// The services with `build:`: each gets the tag its recipe is pushed as, in the
/// environment's build registry. Refused without one, or without the context uploaded.
fn plan_builds(
    state: &AppState,
    project: &compose::Project,
    stack: &mut define::StackDef,
    contexts: &BTreeMap<String, String>,
    auths: &crate::images::Auths,
) -> Result<Vec<crate::builds::Planned>> {
    let mut planned = Vec::new();
    for (name, _, def) in stack.services.iter_mut() {
        let Some(build) = project.services.get(name).and_then(|s| s.build.clone()) else {
            continue;
        };
        let Some(registry) = auths.build_registry() else {
            return Err(unprocessable(format!(
                "services.{name}.build: corral builds once and pushes to the environment's build registry, so that every host runs the same digest; name one with `corral registry add HOST[:PORT] --builds …`. Nothing was changed"
            )));
        };
        let Some(sha) = contexts.get(name) else {
            return Err(bad(format!(
                "services.{name}.build: its context was not sent (`corral up` sends it)"
            )));
        };
        if !crate::builds::has_context(state, sha)? {
            return Err(bad(format!(
                "services.{name}.build: context {sha} was not uploaded (`corral up` uploads it first)"
            )));
        }
        let tag = crate::builds::tag_for(&registry.registry, &stack.name, name, sha, &build)?;
        def.template.image = tag.clone();
        def.template.image_source = None;
        if def.template.pull == corral_proto::PullPolicy::Never {
            def.template.pull = corral_proto::PullPolicy::Missing;
        }
        planned.push(crate::builds::Planned {
            service: name.clone(),
            context_sha: sha.clone(),
            build,
            tag,
        });
    }
    Ok(planned)
}

/// The project files `corral up` sent, checked: paths inside the project, sizes and count
/// within the limits (a secret's file among them: its content is never quoted).
fn project_files(sent: &[corral_proto::files::ProjectFile]) -> Result<define::ProjectFiles> {
    use corral_proto::files::{MAX_FILE_BYTES, MAX_PROJECT_FILES, MAX_PROJECT_FILES_BYTES};
    if sent.len() > MAX_PROJECT_FILES {
        return Err(bad(format!(
            "{} project files sent; the limit is {MAX_PROJECT_FILES}",
            sent.len()
        )));
    }
    let mut total = 0usize;
    let mut out = define::ProjectFiles::new();
    for f in sent {
        corral_proto::files::check_entry_path(&f.path)
            .map_err(|why| bad(format!("project file {why}")))?;
        if f.data.len() > MAX_FILE_BYTES {
            return Err(bad(format!(
                "project file ./{} is {} bytes; the limit is {MAX_FILE_BYTES} (ship larger data in an image or a volume)",
                f.path,
                f.data.len()
            )));
        }
        total += f.data.len();
        if total > MAX_PROJECT_FILES_BYTES {
            return Err(bad(format!(
                "the project files sent add up to more than {MAX_PROJECT_FILES_BYTES} bytes"
            )));
        }
        if f.mode > 0o7777 {
            return Err(bad(format!(
                "project file ./{}: mode {:o} is not a file mode",
                f.path, f.mode
            )));
        }
        if out
            .insert(f.path.clone(), (f.mode, f.data.clone()))
            .is_some()
        {
            return Err(bad(format!("project file ./{} was sent twice", f.path)));
        }
    }
    Ok(out)
}

/// The hosts the dry run places replicas on (in order), then every other ready host: the
/// first connected one resolves the stack's tags.
fn chosen_hosts(world: &reconciler::World, actions: &[reconcile::Action]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for a in actions {
        if let reconcile::Action::Run { host_id, .. } = a
            && !hosts.contains(host_id)
        {
            hosts.push(host_id.clone());
        }
    }
    for h in world.hosts.iter().filter(|h| h.ready) {
        if !hosts.contains(&h.id) {
            hosts.push(h.id.clone());
        }
    }
    hosts
}

/// Services whose tag could not be resolved now but was at their last `up` keep that digest.
/// Returns (image, digest) of each.
fn keep_running_digests(
    old: &[(String, ServiceDef)],
    services: &mut [(String, u32, ServiceDef)],
) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for (name, _, def) in services.iter_mut() {
        let t = &mut def.template;
        if t.image_source.is_some() || t.pull == corral_proto::PullPolicy::Never {
            continue;
        }
        let Some((_, before)) = old.iter().find(|(n, _)| n == name) else {
            continue;
        };
        if before.template.image_source.as_deref() == Some(t.image.as_str()) {
            let digest = before
                .template
                .image
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            kept.push((t.image.clone(), digest));
            t.image_source = Some(std::mem::replace(
                &mut t.image,
                before.template.image.clone(),
            ));
        }
    }
    kept
}

/// Services whose tag now resolves to another digest than the one they run: they roll.
fn digest_changes(
    previous: &[(String, ServiceDef)],
    services: &[(String, u32, ServiceDef)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, old) in previous {
        let Some((_, _, new)) = services.iter().find(|(n, _, _)| n == name) else {
            continue;
        };
        let (old_t, new_t) = (&old.template, &new.template);
        if old_t.image_source.is_some()
            && old_t.image_source == new_t.image_source
            && old_t.image != new_t.image
        {
            let digest = |image: &str| {
                image
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default()
            };
            out.push(format!(
                "service {}: {} now resolves to {} (was {}): its replicas roll to the new digest",
                name,
                new_t.image_source.as_deref().unwrap_or_default(),
                digest(&new_t.image),
                digest(&old_t.image)
            ));
        }
    }
    out
}

/// Asks each host chosen in the dry run whether it has the unpinned images it would run
/// (`pull_policy: never`, or a tag its registry could not resolve): those are not pulled by
/// digest, so a host without them cannot run the service.
async fn check_images(
    state: &Arc<AppState>,
    world: &reconciler::World,
    services: &[reconcile::Service],
    actions: &[reconcile::Action],
    unresolved: &BTreeMap<String, String>,
) -> Result<()> {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in actions {
        if let reconcile::Action::Run {
            service, host_id, ..
        } = a
            && let Some(s) = services.iter().find(|s| &s.name == service)
        {
            let t = &s.def.template;
            let pinned = corral_proto::ImageRef::parse(&t.image).is_ok_and(|r| r.digest.is_some());
            if pinned {
                continue;
            }
            let images = wanted.entry(host_id.clone()).or_default();
            if !images.contains(&t.image) {
                images.push(t.image.clone());
            }
        }
    }
    let mut missing = Vec::new();
    for (host_id, images) in wanted {
        let host = world.host_name(&host_id);
        let check = ImageCheck { images };
        // An answer that does not read is a failed check, never "nothing missing".
        match dispatch::call(state, &host_id, check, IMAGE_CHECK_TTL).await {
            Ok(absent) => {
                for image in absent {
                    let why = unresolved
                        .get(&image)
                        .map(|why| format!("image {image} ({why}), and host {host} does not have it"))
                        .unwrap_or_else(|| {
                            format!(
                                "image {image} is not present on host {host} and its service's pull_policy is never: load it there first"
                            )
                        });
                    missing.push(why);
                }
            }
            Err(CallError::Expired) => missing.push(format!(
                "host {host} did not answer the image check in time"
            )),
            Err(CallError::Store(e)) => return Err(e.into()),
            Err(e) => missing.push(format!("host {host} cannot check its images: {e}")),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let more = missing.len().saturating_sub(MAX_IMAGE_LINES);
    missing.truncate(MAX_IMAGE_LINES);
    if more > 0 {
        missing.push(format!("… and {} more", thousands(more as u64)));
    }
    Err(unprocessable(format!(
        "nothing was changed:\n  {}",
        missing.join("\n  ")
    )))
}

/// Most lines about missing images in a refusal; the rest are counted.
const MAX_IMAGE_LINES: usize = 20;

/// How long a host may take to say which images it lacks.
const IMAGE_CHECK_TTL: Duration = Duration::from_secs(15);

fn service_def(row: &ServiceRow) -> Option<ServiceDef> {
    serde_json::from_str(&row.spec).ok()
}

/// One stack with its services and replicas, as `corral ps` shows it.
pub async fn view(state: &AppState, stack: &StackRow) -> Result<StackView> {
    let (services, unopened) = match state.store.services(&stack.id).await {
        Ok(services) => (services, None),
        Err(crate::store::StoreError::Corrupt(why)) => (Vec::new(), Some(why)),
        Err(e) => return Err(e.into()),
    };
    let containers = state.store.stack_containers(&stack.id).await?;
    let hosts = state.store.host_names().await?;
    let env = state.store.environment_name(&stack.environment_id).await?;
    let status = state.reconciler.status(&stack.id);
    let mut views = Vec::new();
    let error = status
        .as_ref()
        .and_then(|s| s.unreadable.clone())
        .or(unopened);
    let mut converged = stack.state == StackState::Active && error.is_none();
    for svc in &services {
        let def = service_def(svc);
        let mine: Vec<&ContainerRow> = containers
            .iter()
            .filter(|c| c.service.as_deref() == Some(svc.name.as_str()))
            .collect();
        let replicas: Vec<ReplicaView> = mine
            .iter()
            .map(|c| {
                let mut r = replica_view(c, svc, &hosts);
                r.pulling = state
                    .pulls
                    .of_container(&c.host_id, &c.id)
                    .map(|p| crate::state::pulls::describe(&p));
                r
            })
            .collect();
        let ready = mine
            .iter()
            .filter(|c| counts_ready(c.desired, c.spec_hash.as_deref(), svc, c.actual, c.health))
            .count() as u32;
        let outdated = mine
            .iter()
            .filter(|c| c.spec_hash.as_deref() != Some(svc.spec_hash.as_str()))
            .count() as u32;
        let (unplaced, unplaced_count) = status
            .as_ref()
            .and_then(|s| s.unplaced.get(&svc.name))
            .map(|u| (u.lines(&svc.name), u.count))
            .unwrap_or_default();
        let desired = u32::try_from(svc.replicas).unwrap_or(0);
        if !service_converged(desired, mine.len(), ready, unplaced_count) {
            converged = false;
        }
        views.push(ServiceView {
            name: svc.name.clone(),
            image: def
                .as_ref()
                .map(|d| {
                    d.template
                        .image_source
                        .clone()
                        .unwrap_or_else(|| d.template.image.clone())
                })
                .unwrap_or_default(),
            digest: def.as_ref().and_then(|d| {
                corral_proto::ImageRef::parse(&d.template.image)
                    .ok()
                    .and_then(|r| r.digest)
            }),
            desired,
            ready,
            outdated,
            ports: def
                .map(|d| d.template.ports.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            unplaced,
            unplaced_count,
            waiting: status
                .as_ref()
                .and_then(|s| s.waiting.get(&svc.name).cloned()),
            last_error: state.reconciler.last_error(&stack.id, &svc.name),
            replicas,
        });
    }
    // Containers of services no longer in the stack.
    if containers
        .iter()
        .any(|c| !services.iter().any(|s| Some(&s.name) == c.service.as_ref()))
    {
        converged = false;
    }
    Ok(StackView {
        name: stack.name.clone(),
        environment: env,
        state: if error.is_some() {
            "failed".into()
        } else {
            stack.state.as_str().into()
        },
        error,
        converged,
        services: views,
        created_at: rfc3339(stack.created_at),
        updated_at: rfc3339(stack.updated_at),
    })
}

fn replica_view(
    c: &ContainerRow,
    svc: &ServiceRow,
    hosts: &BTreeMap<String, String>,
) -> ReplicaView {
    ReplicaView {
        name: c.name.clone(),
        slot: c.slot.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        host: hosts
            .get(&c.host_id)
            .cloned()
            .unwrap_or_else(|| c.host_id.clone()),
        desired: c.desired.as_str().into(),
        actual: c.actual.as_str().into(),
        health: c.health.map(|h| h.as_str().into()),
        exit_code: c.exit_code,
        current: c.spec_hash.as_deref() == Some(svc.spec_hash.as_str()),
        ip: c.ip.clone(),
        pulling: None,
    }
}

pub async fn get(state: &AppState, name: &str) -> Result<StackView> {
    let stack = state.store.find_stack(name).await?;
    view(state, &stack).await
}

/// A replica counts as ready: meant to run, made from the service's current definition,
/// and running (healthy, with a healthcheck).
fn counts_ready(
    desired: Desired,
    spec_hash: Option<&str>,
    svc: &ServiceRow,
    actual: corral_control::states::Actual,
    health: Option<corral_proto::Health>,
) -> bool {
    desired == Desired::Running
        && spec_hash == Some(svc.spec_hash.as_str())
        && is_ready(actual, health)
}

/// A service is converged: as many replicas as desired, all ready, none left unplaced.
fn service_converged(desired: u32, containers: usize, ready: u32, unplaced: u64) -> bool {
    ready == desired && containers == desired as usize && unplaced == 0
}

/// Every stack, as [`view`] would sum it up — from container counts (one grouped read for
/// all stacks), not from each stack's rows: with a million replicas, reading every row and
/// opening every spec for a listing took longer than a client waits.
pub async fn list(state: &AppState) -> Result<Vec<StackSummary>> {
    let mut counts: HashMap<String, Vec<crate::store::ContainerCount>> = HashMap::new();
    for c in state.store.stack_container_counts().await? {
        counts.entry(c.stack_id.clone()).or_default().push(c);
    }
    let environments = state.store.environment_names().await?;
    let mut out = Vec::new();
    for stack in state.store.stacks().await? {
        let (services, unopened) = match state.store.services(&stack.id).await {
            Ok(services) => (services, false),
            Err(crate::store::StoreError::Corrupt(_)) => (Vec::new(), true),
            Err(e) => return Err(e.into()),
        };
        let status = state.reconciler.status(&stack.id);
        let failed = unopened || status.as_ref().is_some_and(|s| s.unreadable.is_some());
        let mine = counts.get(&stack.id).map(Vec::as_slice).unwrap_or_default();
        let mut converged = stack.state == StackState::Active && !failed;
        let (mut running, mut desired_total) = (0u32, 0u32);
        for svc in &services {
            let of_service = || {
                mine.iter()
                    .filter(|c| c.service.as_deref() == Some(svc.name.as_str()))
            };
            let containers: usize = of_service().map(|c| c.count as usize).sum();
            let ready: u32 = of_service()
                .filter(|c| {
                    counts_ready(c.desired, c.spec_hash.as_deref(), svc, c.actual, c.health)
                })
                .map(|c| c.count)
                .sum();
            let unplaced = status
                .as_ref()
                .and_then(|s| s.unplaced.get(&svc.name))
                .map_or(0, |u| u.count);
            let desired = u32::try_from(svc.replicas).unwrap_or(0);
            if !service_converged(desired, containers, ready, unplaced) {
                converged = false;
            }
            running += ready;
            desired_total += desired;
        }
        // Containers of services no longer in the stack.
        if mine
            .iter()
            .any(|c| !services.iter().any(|s| Some(&s.name) == c.service.as_ref()))
        {
            converged = false;
        }
        let environment = match environments.get(&stack.environment_id) {
            Some(name) => name.clone(),
            // As `view` reads it (and fails as it does).
            None => state.store.environment_name(&stack.environment_id).await?,
        };
        out.push(StackSummary {
            name: stack.name.clone(),
            environment,
            state: if failed {
                "failed".into()
            } else {
                stack.state.as_str().into()
            },
            services: services.len(),
            running,
            desired: desired_total,
            converged,
            updated_at: rfc3339(stack.updated_at),
        });
    }
    Ok(out)
}

/// Largest replica count of one service: one limit for `corral up` (the Compose loader) and
/// `corral scale`.
pub use corral_compose::limits::MAX_REPLICAS;

/// Most replicas one stack may have by default (`--max-stack-replicas` sets it).
pub use crate::bootstrap::DEFAULT_MAX_STACK_REPLICAS;

pub async fn scale(state: &AppState, name: &str, req: ScaleRequest) -> Result<StackView> {
    if req.replicas > MAX_REPLICAS {
        return Err(bad(format!(
            "{} replicas is over the limit of {MAX_REPLICAS} per service",
            req.replicas
        )));
    }
    let stack = state.store.find_stack(name).await?;
    if stack.state != StackState::Active {
        return Err(Error::conflict(format!(
            "stack {} is being removed",
            stack.name
        )));
    }
    match state
        .store
        .set_replicas(
            &stack.id,
            &req.service,
            req.replicas,
            state.options.max_stack_replicas,
            now_unix(),
        )
        .await?
    {
        SetReplicas::Done => {}
        SetReplicas::NoService => {
            return Err(Error::NotFound(format!(
                "stack {} has no service {:?}; see `corral ps -p {}`",
                stack.name, req.service, stack.name
            )));
        }
        SetReplicas::OverTotal { total } => {
            return Err(bad(format!(
                "stack {} would have {} replicas in all; the limit is {} per stack",
                stack.name,
                thousands(total),
                thousands(state.options.max_stack_replicas)
            )));
        }
    }
    state
        .record_event(
            "stack_scaled",
            None,
            &format!(
                "{}/{} to {} replicas",
                stack.name, req.service, req.replicas
            ),
        )
        .await;
    state.reconciler.wake();
    view(state, &stack).await
}

/// `corral down`: mark the stack for removal; the reconciler removes its containers, then its
/// network (and volumes, when asked) on every connected host, then the stack.
pub async fn down(state: &AppState, name: &str, volumes: bool) -> Result<StackView> {
    let stack = state.store.find_stack(name).await?;
    state
        .store
        .mark_stack_removing(&stack.id, volumes, now_unix())
        .await?;
    state
        .record_event(
            "stack_removing",
            None,
            &format!(
                "stack {}{}",
                stack.name,
                if volumes { " (with volumes)" } else { "" }
            ),
        )
        .await;
    state.reconciler.wake();
    let stack = state.store.find_stack(&stack.id).await?;
    view(state, &stack).await
}

/// `corral logs STACK/SERVICE`: every replica's log, each line prefixed with `SERVICE.SLOT | `.
pub async fn logs(
    state: &Arc<AppState>,
    stack: &str,
    service: &str,
    follow: bool,
    tail: Option<u64>,
) -> Result<axum::body::Body> {
    use futures_util::StreamExt;
    let stack = state.store.find_stack(stack).await?;
    let replicas: Vec<ContainerRow> = state
        .store
        .stack_containers(&stack.id)
        .await?
        .into_iter()
        .filter(|c| c.service.as_deref() == Some(service) && c.desired == Desired::Running)
        .collect();
    if replicas.is_empty() {
        return Err(Error::NotFound(format!(
            "stack {} has no running replica of {service:?}; see `corral ps -p {}`",
            stack.name, stack.name
        )));
    }
    let mut streams = Vec::new();
    for c in &replicas {
        let body = crate::containers::logs(state, &c.id, follow, tail).await?;
        let prefix = format!("{service}.{} | ", c.slot.unwrap_or(0));
        streams.push(prefixed_lines(body.into_data_stream(), prefix).boxed());
    }
    Ok(axum::body::Body::from_stream(
        futures_util::stream::select_all(streams),
    ))
}

/// Splits a byte stream into lines and prefixes each; a partial last line is flushed at the
/// end. Lines longer than 64 KiB are cut there.
fn prefixed_lines(
    body: axum::body::BodyDataStream,
    prefix: String,
) -> impl futures_util::Stream<Item = std::result::Result<axum::body::Bytes, axum::Error>> + Send {
    use futures_util::StreamExt;
    const MAX_LINE: usize = 64 * 1024;
    futures_util::stream::unfold(
        (body, Vec::<u8>::new(), false),
        move |(mut body, mut pending, done)| {
            let prefix = prefix.clone();
            async move {
                loop {
                    if let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=nl).collect();
                        let mut out = prefix.clone().into_bytes();
                        out.extend_from_slice(&line);
                        return Some((Ok(axum::body::Bytes::from(out)), (body, pending, done)));
                    }
                    if pending.len() >= MAX_LINE || (done && !pending.is_empty()) {
                        let mut out = prefix.clone().into_bytes();
                        out.append(&mut pending);
                        out.push(b'\n');
                        return Some((Ok(axum::body::Bytes::from(out)), (body, pending, done)));
                    }
                    if done {
                        return None;
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                        Some(Err(e)) => return Some((Err(e), (body, pending, true))),
                        None => return Some(flush_or_end(prefix, body, pending)),
                    }
                }
            }
        },
    )
    .filter_map(|item| async move {
        match item {
            Ok(b) if b.is_empty() => None,
            other => Some(other),
        }
    })
}

type LineState = (axum::body::BodyDataStream, Vec<u8>, bool);

fn flush_or_end(
    prefix: String,
    body: axum::body::BodyDataStream,
    mut pending: Vec<u8>,
) -> (
    std::result::Result<axum::body::Bytes, axum::Error>,
    LineState,
) {
    if pending.is_empty() {
        return (Ok(axum::body::Bytes::new()), (body, pending, true));
    }
    let mut out = prefix.into_bytes();
    out.append(&mut pending);
    out.push(b'\n');
    (Ok(axum::body::Bytes::from(out)), (body, pending, true))
}

/// `corral admission test`: what the policy (the environment's, or the one given) refuses of
/// a Compose project, without deploying it or asking any registry. A tag `up` would resolve
/// is noted, not refused: whether its registry answers is known only at `up`.
pub async fn admission_test(
    state: &AppState,
    env: &str,
    req: corral_proto::api::AdmissionTestRequest,
) -> Result<corral_proto::api::AdmissionVerdict> {
    let env_row = state
        .store
        .environment_by_name(env)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no environment {env:?}")))?;
    let policy = match &req.policy {
        Some(doc) => corral_control::admission::parse(doc).map_err(bad)?,
        None => crate::images::policy(state, &env_row.id).await?,
    };
    let up = req.project;
    let mut input = compose::Input {
        files: sources(&up.files),
        env_files: sources(&up.env_files),
        referenced_files: sources(&up.referenced_files),
        env: up.env.clone(),
        project_name: up.name.clone(),
    };
    // A test needs no stack name: the files' own, else a placeholder.
    let loaded = match compose::load(&input) {
        Ok(l) => l,
        Err(_) if input.project_name.is_none() => {
            input.project_name = Some("admission-test".into());
            compose::load(&input).map_err(|e| bad(e.to_string()))?
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let stack = define::define(&loaded.project).map_err(|e| bad(first_errors(&e)))?;
    let mut refusals = Vec::new();
    let mut notes = Vec::new();
    for (name, _, def) in &stack.services {
        refusals.extend(policy.refusals(name, &def.template));
        let t = &def.template;
        let pinned = corral_proto::ImageRef::parse(&t.image).is_ok_and(|r| r.digest.is_some());
        if policy.require_digest && !pinned {
            if t.pull == corral_proto::PullPolicy::Never {
                refusals.extend(policy.check_pinned(name, t));
            } else {
                notes.push(format!(
                    "service {name}: {} is admitted if its registry resolves it to a digest at `up`",
                    t.image
                ));
            }
        }
    }
    Ok(corral_proto::api::AdmissionVerdict {
        admitted: refusals.is_empty(),
        refusals: crate::images::refusal_views(&refusals),
        notes,
    })
}

/// `corral secret ls`: every stack's secrets, by name and version (never a value).
pub async fn secrets(state: &AppState) -> Result<Vec<corral_proto::api::SecretView>> {
    let mut out: Vec<corral_proto::api::SecretView> = Vec::new();
    let env_names = state.store.environment_names().await?;
    for stack in state.store.stacks().await? {
        let environment = env_names
            .get(&stack.environment_id)
            .cloned()
            .ok_or_else(|| {
                Error::Refused(format!(
                    "stack {} belongs to no known environment; its secrets cannot be listed",
                    stack.name
                ))
            })?;
        let rows = match state.store.services(&stack.id).await {
            Ok(rows) => rows,
            Err(crate::store::StoreError::Corrupt(why)) => {
                return Err(Error::Refused(format!(
                    "the secrets of stack {} cannot be listed: {why}",
                    stack.name
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for row in rows {
            let def = service_def(&row).ok_or_else(|| {
                Error::Refused(format!(
                    "the definition of {}/{} does not read; its secrets cannot be listed",
                    stack.name, row.name
                ))
            })?;
            for f in def
                .template
                .files
                .iter()
                .filter(|f| f.kind == corral_proto::FileKind::Secret)
            {
                let name = f.name.strip_prefix("secret ").unwrap_or(&f.name).to_owned();
                let version: String = f.digest.chars().take(12).collect();
                let mount = format!("{}:{}", row.name, f.target);
                match out.iter_mut().find(|s| {
                    s.environment == environment
                        && s.stack == stack.name
                        && s.name == name
                        && s.version == version
                }) {
                    Some(s) => s.mounts.push(mount),
                    None => out.push(corral_proto::api::SecretView {
                        environment: environment.clone(),
                        stack: stack.name.clone(),
                        name,
                        version,
                        mounts: vec![mount],
                    }),
                }
            }
        }
    }
    Ok(out)
}

/// Each service's own labels (`labels:` in the Compose file; corral's `io.corral.*` left out),
/// which network policy rules select on.
fn service_labels(
    services: &[(String, u32, corral_control::define::ServiceDef)],
) -> BTreeMap<String, BTreeMap<String, String>> {
    services
        .iter()
        .map(|(name, _, def)| {
            let own = def
                .template
                .labels
                .iter()
                .filter(|(k, _)| !k.starts_with("io.corral."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (name.clone(), own)
        })
        .collect()
}
