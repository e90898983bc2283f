//! Commands (server → agent) and their replies, typed.
//!
//! On the wire a command is `{"type":"command","id":…,"kind":…,"payload":{…},"deadline":…}`
//! and its reply `{"type":"reply","command_id":…,"result":{"status":"ok","value":…}}` (or
//! `{"status":"failed","message":…}`). In memory each kind is a variant of [`CommandBody`] with
//! its own payload type, and each request type names the type of its reply ([`Request`]), so
//! neither end builds or reads a payload by hand.
//!
//! Payload objects are written with their keys in sorted order, as the protocol always has
//! (`tests/golden_frames.rs` pins the bytes). A command whose kind this build does not know, or
//! whose payload does not decode, is read as [`CommandBody::Unreadable`] rather than failing
//! the whole frame, so the agent can answer it with an error instead of dropping the tunnel.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::image::{
    BuildChunk, BuildImage, BuiltImage, ImageSummary, ListImages, PullImage, RemoveImage,
    RemovedImage, Resolution, ResolveImages,
};
use crate::message::{
    Check, ContainerRef, ContainerSpec, ContainerStatus, FirewallApply, ImageCheck, OverlayProbe,
    StackCleanup,
};

/// Work for an agent. Commands are idempotent: one may be delivered again after a reconnect,
/// and carrying it out twice has the effect of carrying it out once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Unique id; the reply names it.
    pub id: String,
    /// What to do, with its arguments.
    pub body: CommandBody,
    /// Unix seconds after which the server no longer waits for the outcome.
    pub deadline: i64,
}

/// What a command asks for, with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum CommandBody {
    /// Run the agent's local checks (Docker socket, nft, TUN device, clock) and report them.
    Doctor(DoctorRequest),
    /// Install the host's rules as corral's own nftables table (`table inet corral`), with a
    /// dead-man timer: if the agent cannot open a new connection to the server within the
    /// confirmation window, it restores the previous rules by itself.
    FirewallApply(FirewallApply),
    /// Report whether an overlay probe with this nonce arrives on the overlay socket.
    OverlayExpect(OverlayProbe),
    /// Send overlay probes with this nonce to a peer's overlay endpoint.
    OverlaySend(OverlayProbe),
    /// Create (if absent) and start a container. Idempotent by corral container id.
    ContainerRun(Box<ContainerSpec>),
    /// Start a created or exited container.
    ContainerStart(ContainerRef),
    /// Stop with a grace period, then kill.
    ContainerStop(ContainerRef),
    /// Remove a container (stopping it first when a grace period is given).
    ContainerRemove(ContainerRef),
    /// Open a log stream (answered at once; data follows as stream messages).
    ContainerLogs(ContainerRef),
    /// Which of these images are missing on the host; answered with the missing ones. Lets
    /// `corral up` refuse a stack before anything is created.
    ImageCheck(ImageCheck),
    /// Remove what a stack left on the host besides containers: its network and, when asked,
    /// its named volumes.
    StackCleanup(StackCleanup),
    /// Ask the images' registries (through the host's dockerd) which manifest digest each
    /// reference names now, so every host of a service runs the same bytes.
    ImageResolve(ResolveImages),
    /// Pull one image now, reporting progress.
    ImagePull(PullImage),
    /// List the host's images.
    ImageList(ListImages),
    /// Remove an image from the host (refused by Docker while a container uses it).
    ImageRemove(RemoveImage),
    /// A piece of a build context.
    ImageBuildChunk(BuildChunk),
    /// Build a context the chunks carried, and push the image.
    ImageBuild(BuildImage),
    /// A command this build cannot read: an unknown kind (from a newer server) or a payload
    /// that does not decode. Never built on purpose; the agent answers it with an error.
    #[serde(skip)]
    Unreadable {
        /// The kind as it arrived.
        kind: String,
        /// Why it could not be read.
        error: String,
    },
}

/// The kind of a command, without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// [`CommandBody::Doctor`].
    Doctor,
    /// [`CommandBody::FirewallApply`].
    FirewallApply,
    /// [`CommandBody::OverlayExpect`].
    OverlayExpect,
    /// [`CommandBody::OverlaySend`].
    OverlaySend,
    /// [`CommandBody::ContainerRun`].
    ContainerRun,
    /// [`CommandBody::ContainerStart`].
    ContainerStart,
    /// [`CommandBody::ContainerStop`].
    ContainerStop,
    /// [`CommandBody::ContainerRemove`].
    ContainerRemove,
    /// [`CommandBody::ContainerLogs`].
    ContainerLogs,
    /// [`CommandBody::ImageCheck`].
    ImageCheck,
    /// [`CommandBody::StackCleanup`].
    StackCleanup,
    /// [`CommandBody::ImageResolve`].
    ImageResolve,
    /// [`CommandBody::ImagePull`].
    ImagePull,
    /// [`CommandBody::ImageList`].
    ImageList,
    /// [`CommandBody::ImageRemove`].
    ImageRemove,
    /// [`CommandBody::ImageBuildChunk`].
    ImageBuildChunk,
    /// [`CommandBody::ImageBuild`].
    ImageBuild,
    /// [`CommandBody::Unreadable`].
    Unknown,
}

impl CommandKind {
    /// The kind's name on the wire and in the datastore.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Doctor => "doctor",
            CommandKind::FirewallApply => "firewall_apply",
            CommandKind::OverlayExpect => "overlay_expect",
            CommandKind::OverlaySend => "overlay_send",
            CommandKind::ContainerRun => "container_run",
            CommandKind::ContainerStart => "container_start",
            CommandKind::ContainerStop => "container_stop",
            CommandKind::ContainerRemove => "container_remove",
            CommandKind::ContainerLogs => "container_logs",
            CommandKind::ImageCheck => "image_check",
            CommandKind::StackCleanup => "stack_cleanup",
            CommandKind::ImageResolve => "image_resolve",
            CommandKind::ImagePull => "image_pull",
            CommandKind::ImageList => "image_list",
            CommandKind::ImageRemove => "image_remove",
            CommandKind::ImageBuildChunk => "image_build_chunk",
            CommandKind::ImageBuild => "image_build",
            CommandKind::Unknown => "unknown",
        }
    }
}

/// A command body that could not be turned into its wire form.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a {kind} command: {message}")]
pub struct EncodeError {
    kind: &'static str,
    message: String,
}

impl CommandBody {
    /// The kind, without the payload.
    pub fn kind(&self) -> CommandKind {
        match self {
            CommandBody::Doctor(_) => CommandKind::Doctor,
            CommandBody::FirewallApply(_) => CommandKind::FirewallApply,
            CommandBody::OverlayExpect(_) => CommandKind::OverlayExpect,
            CommandBody::OverlaySend(_) => CommandKind::OverlaySend,
            CommandBody::ContainerRun(_) => CommandKind::ContainerRun,
            CommandBody::ContainerStart(_) => CommandKind::ContainerStart,
            CommandBody::ContainerStop(_) => CommandKind::ContainerStop,
            CommandBody::ContainerRemove(_) => CommandKind::ContainerRemove,
            CommandBody::ContainerLogs(_) => CommandKind::ContainerLogs,
            CommandBody::ImageCheck(_) => CommandKind::ImageCheck,
            CommandBody::StackCleanup(_) => CommandKind::StackCleanup,
            CommandBody::ImageResolve(_) => CommandKind::ImageResolve,
            CommandBody::ImagePull(_) => CommandKind::ImagePull,
            CommandBody::ImageList(_) => CommandKind::ImageList,
            CommandBody::ImageRemove(_) => CommandKind::ImageRemove,
            CommandBody::ImageBuildChunk(_) => CommandKind::ImageBuildChunk,
            CommandBody::ImageBuild(_) => CommandKind::ImageBuild,
            CommandBody::Unreadable { .. } => CommandKind::Unknown,
        }
    }

    /// The kind's name as it goes on the wire (an unreadable body keeps the name it came with).
    pub fn kind_name(&self) -> &str {
        match self {
            CommandBody::Unreadable { kind, .. } => kind,
            other => other.kind().as_str(),
        }
    }

    /// The wire form: the kind's name and the payload (keys sorted).
    pub fn to_wire(&self) -> Result<(String, serde_json::Value), EncodeError> {
        if let CommandBody::Unreadable { kind, .. } = self {
            return Ok((kind.clone(), serde_json::Value::Null));
        }
        let encode_error = |message: String| EncodeError {
            kind: self.kind().as_str(),
            message,
        };
        match serde_json::to_value(self).map_err(|e| encode_error(e.to_string()))? {
            serde_json::Value::Object(mut pair) => {
                let payload = pair.remove("payload").unwrap_or_default();
                Ok((self.kind().as_str().to_owned(), payload))
            }
            other => Err(encode_error(format!("encoded as {other}, not an object"))),
        }
    }

    /// Reads a body from its wire form. Never fails: what cannot be read becomes
    /// [`CommandBody::Unreadable`], saying why.
    pub fn from_wire(kind: &str, payload: serde_json::Value) -> CommandBody {
        let pair = serde_json::json!({ "kind": kind, "payload": payload });
        serde_json::from_value(pair).unwrap_or_else(|e| CommandBody::Unreadable {
            kind: kind.to_owned(),
            error: e.to_string(),
        })
    }
}

/// The fields of a command frame, as they are written and read.
#[derive(Serialize, Deserialize)]
struct WireCommand {
    id: String,
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
    deadline: i64,
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (kind, payload) = self.body.to_wire().map_err(serde::ser::Error::custom)?;
        WireCommand {
            id: self.id.clone(),
            kind,
            payload,
            deadline: self.deadline,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireCommand::deserialize(deserializer)?;
        Ok(Command {
            body: CommandBody::from_wire(&wire.kind, wire.payload),
            id: wire.id,
            deadline: wire.deadline,
        })
    }
}

/// The outcome of a command, as the agent sends it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandResult {
    /// Done; `value` is the request's [`Request::Reply`].
    Ok {
        /// The reply, in the form of the request's reply type.
        #[serde(default)]
        value: serde_json::Value,
    },
    /// Not done, and why.
    Failed {
        /// What went wrong, for people.
        message: String,
    },
}

impl CommandResult {
    /// The result of carrying out request `R`: its typed reply, or why it failed.
    pub fn of<R: Request>(outcome: Result<R::Reply, String>) -> CommandResult {
        match outcome.map(|reply| serde_json::to_value(&reply)) {
            Ok(Ok(value)) => CommandResult::Ok { value },
            Ok(Err(e)) => CommandResult::Failed {
                message: format!("cannot encode the reply: {e}"),
            },
            Err(message) => CommandResult::Failed { message },
        }
    }
}

/// A request an agent carries out, and the type of its answer.
pub trait Request: Into<CommandBody> {
    /// What the agent answers when the request succeeds.
    type Reply: Serialize + DeserializeOwned;

    /// Reads the reply out of a successful result.
    fn decode_reply(value: serde_json::Value) -> Result<Self::Reply, serde_json::Error> {
        serde_json::from_value(value)
    }
}

/// Payload of [`CommandBody::Doctor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorRequest {
    /// The server's clock when it sent the command (Unix milliseconds), to measure skew.
    #[serde(default)]
    pub server_time_ms: Option<i64>,
}

impl From<DoctorRequest> for CommandBody {
    fn from(r: DoctorRequest) -> Self {
        CommandBody::Doctor(r)
    }
}

impl Request for DoctorRequest {
    type Reply = Vec<Check>;
}

/// Reply to [`CommandBody::FirewallApply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallOutcome {
    /// The rules were installed and confirmed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub applied: bool,
    /// How long after installing them the agent reached the server through them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_after_ms: Option<u64>,
    /// This was a dry run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// The dry run's `nft -c` accepted the rules.
    #[serde(default, skip_serializing_if = "is_false")]
    pub checked: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<FirewallApply> for CommandBody {
    fn from(r: FirewallApply) -> Self {
        CommandBody::FirewallApply(r)
    }
}

impl Request for FirewallApply {
    type Reply = FirewallOutcome;
}

/// [`CommandBody::OverlayExpect`]: wait for a probe on the overlay socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectProbe(pub OverlayProbe);

/// Reply to [`CommandBody::OverlayExpect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReceived {
    /// A probe with the nonce arrived within the window.
    pub received: bool,
}

impl From<ExpectProbe> for CommandBody {
    fn from(r: ExpectProbe) -> Self {
        CommandBody::OverlayExpect(r.0)
    }
}

impl Request for ExpectProbe {
    type Reply = ProbeReceived;
}

/// [`CommandBody::OverlaySend`]: send probes to a peer's overlay socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendProbe(pub OverlayProbe);

/// Reply to [`CommandBody::OverlaySend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSent {
    /// How many datagrams were sent.
    pub sent: u32,
}

impl From<SendProbe> for CommandBody {
    fn from(r: SendProbe) -> Self {
        CommandBody::OverlaySend(r.0)
    }
}

impl Request for SendProbe {
    type Reply = ProbeSent;
}

impl From<ContainerSpec> for CommandBody {
    fn from(r: ContainerSpec) -> Self {
        CommandBody::ContainerRun(Box::new(r))
    }
}

/// Run: the container as it runs now.
impl Request for ContainerSpec {
    type Reply = ContainerStatus;
}

/// [`CommandBody::ContainerStart`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartContainer(pub ContainerRef);

impl From<StartContainer> for CommandBody {
    fn from(r: StartContainer) -> Self {
        CommandBody::ContainerStart(r.0)
    }
}

/// The container as it is now; `None` when the host has no such container.
impl Request for StartContainer {
    type Reply = Option<ContainerStatus>;
}

/// [`CommandBody::ContainerStop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopContainer(pub ContainerRef);

impl From<StopContainer> for CommandBody {
    fn from(r: StopContainer) -> Self {
        CommandBody::ContainerStop(r.0)
    }
}

/// The container as it is now; `None` when the host has no such container.
impl Request for StopContainer {
    type Reply = Option<ContainerStatus>;
}

/// [`CommandBody::ContainerRemove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveContainer(pub ContainerRef);

impl From<RemoveContainer> for CommandBody {
    fn from(r: RemoveContainer) -> Self {
        CommandBody::ContainerRemove(r.0)
    }
}

/// Removed (or already absent): nothing to say.
impl Request for RemoveContainer {
    type Reply = ();
}

/// [`CommandBody::ContainerLogs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLogs(pub ContainerRef);

/// Reply to [`CommandBody::ContainerLogs`]: the stream is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpened {
    /// The stream the data comes on.
    pub stream_id: String,
}

impl From<OpenLogs> for CommandBody {
    fn from(r: OpenLogs) -> Self {
        CommandBody::ContainerLogs(r.0)
    }
}

impl Request for OpenLogs {
    type Reply = StreamOpened;
}

impl From<ImageCheck> for CommandBody {
    fn from(r: ImageCheck) -> Self {
        CommandBody::ImageCheck(r)
    }
}

/// The images that are missing on the host.
impl Request for ImageCheck {
    type Reply = Vec<String>;
}

/// Reply to [`CommandBody::StackCleanup`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupOutcome {
    /// The stack's network was removed.
    pub network_removed: bool,
    /// Named volumes removed (absent ones are not listed).
    #[serde(default)]
    pub volumes_removed: Vec<String>,
    /// Networks and volumes left alone because corral did not create them for this stack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl From<StackCleanup> for CommandBody {
    fn from(r: StackCleanup) -> Self {
        CommandBody::StackCleanup(r)
    }
}

impl Request for StackCleanup {
    type Reply = CleanupOutcome;
}

impl From<ResolveImages> for CommandBody {
    fn from(r: ResolveImages) -> Self {
        CommandBody::ImageResolve(r)
    }
}

/// One resolution per image asked about, in the order asked.
impl Request for ResolveImages {
    type Reply = Vec<Resolution>;
}

impl From<PullImage> for CommandBody {
    fn from(r: PullImage) -> Self {
        CommandBody::ImagePull(r)
    }
}

/// The image as it is on the host after the pull.
impl Request for PullImage {
    type Reply = ImageSummary;
}

impl From<ListImages> for CommandBody {
    fn from(r: ListImages) -> Self {
        CommandBody::ImageList(r)
    }
}

impl Request for ListImages {
    type Reply = Vec<ImageSummary>;
}

impl From<RemoveImage> for CommandBody {
    fn from(r: RemoveImage) -> Self {
        CommandBody::ImageRemove(r)
    }
}

impl Request for RemoveImage {
    type Reply = RemovedImage;
}

impl From<BuildChunk> for CommandBody {
    fn from(r: BuildChunk) -> Self {
        CommandBody::ImageBuildChunk(r)
    }
}

/// Written: nothing to say.
impl Request for BuildChunk {
    type Reply = ();
}

impl From<BuildImage> for CommandBody {
    fn from(r: BuildImage) -> Self {
        CommandBody::ImageBuild(r)
    }
}

impl Request for BuildImage {
    type Reply = BuiltImage;
}
