//! The command line. Definitions only; behaviour lives in `commands`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "corral",
    version,
    about = "A single-binary container orchestrator for Docker hosts, secure by construction",
    long_about = "A single-binary container orchestrator for Docker hosts, secure by construction.\n\nAgents dial out to the server over one TLS WebSocket and listen on no port; the server's CA is pinned; agents are never trusted with more than their own host."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (API, agent tunnel endpoint, datastore); or back up or restore
    /// its data dir (`corral server backup`, `corral server restore`).
    Server(Box<ServerCommand>),
    /// Run the agent on a host: it dials out to the server and listens on nothing.
    Agent(AgentArgs),
    /// Registration tokens for new hosts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Hosts known to the server.
    #[command(subcommand)]
    Host(HostCommand),
    /// Environments: their overlay range, mode and pre-shared key generation.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Registries an environment pulls from: account (sealed at rest) and private CA.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The environment's admission policy: allowed registries, digest pinning, refused tags
    /// and container options that break isolation.
    #[command(subcommand)]
    Admission(AdmissionCommand),
    /// The environment's network policy: which services may reach which, on which ports,
    /// enforced on every host.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Images on one host: pull, list, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Stacks' secrets: names, versions and where they are mounted (never values).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Run a container on a host.
    Run(RunArgs),
    /// Containers: list, inspect, start, stop, remove.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Deploy a stack from Compose files, or update it (a rolling update of the services
    /// whose definition changed).
    Up(UpArgs),
    /// Validate the Compose files and print the resolved project and what corral will do with
    /// each service (merged files, interpolated variables, shipped files, ignored keys),
    /// without deploying; exits 1 on errors. Secrets' values are never printed.
    Config(ConfigArgs),
    /// A stack's services and replicas (every stack's without -p).
    Ps {
        #[command(flatten)]
        conn: Conn,
        /// The stack.
        #[arg(short = 'p', long = "project-name")]
        project: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Stacks.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Set a service's replica count: STACK/SERVICE=N.
    Scale {
        #[command(flatten)]
        conn: Conn,
        /// STACK/SERVICE=N (repeatable).
        #[arg(required = true)]
        targets: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a stack: its containers, then its network (and its volumes with --volumes).
    Down {
        #[command(flatten)]
        conn: Conn,
        /// The stack.
        #[arg(short = 'p', long = "project-name")]
        project: String,
        /// Also remove the stack's named volumes.
        #[arg(long)]
        volumes: bool,
        /// Do not wait for the removal to finish.
        #[arg(long)]
        detach: bool,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Logs of a container, or of every replica of a stack's service (STACK/SERVICE, each
    /// line prefixed with SERVICE.SLOT), streamed from the hosts through the agents' tunnels.
    Logs {
        #[command(flatten)]
        conn: Conn,
        /// Container name or id, or STACK/SERVICE.
        name: String,
        /// Keep streaming new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Log in as a user: a new API key of theirs, saved for the CLI (0600) with the server and
    /// the CA checksum to pin.
    Login {
        #[command(flatten)]
        conn: Conn,
        /// The user's name.
        #[arg(long)]
        user: String,
        /// Read the password from stdin (else it is asked for on the terminal).
        #[arg(long)]
        password_stdin: bool,
        /// How long the key lives (default 30 days).
        #[arg(long, value_parser = crate::duration::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Work in this environment from now on (as `corral env use` does).
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Who the CLI acts as: user, admin or not, roles per environment.
    Whoami {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Users (admins only, but anyone for their own password).
    #[command(subcommand)]
    User(UserCommand),
    /// Your own API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The tamper-evident audit log: every request that changed state or was refused, and the
    /// server's security events, hash-chained.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Security events: registrations, removals, refused and superseded credentials.
    Events {
        #[command(flatten)]
        conn: Conn,
        /// How many of the latest events to show (at most 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(corral_proto::api::MAX_EVENTS_PER_REQUEST)))]
        limit: u32,
        #[command(flatten)]
        out: Out,
    },
    /// Check every host (or one) from the host itself: tunnel, clock, Docker socket, nft, TUN,
    /// no listening port. Shows the fix for each failure; exits 1 if any check fails.
    Doctor {
        #[command(flatten)]
        conn: Conn,
        /// Only this host (name or id).
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Least-privilege firewall rules derived from live state, in the format you paste.
    Firewall(Box<FirewallArgs>),
    /// The architecture and its port flows, drawn from live state; or (`--view services`) an
    /// environment's services and the flows its network policy allows between them.
    Diagram {
        #[command(flatten)]
        conn: Conn,
        /// svg (laid out by corral itself), dot or mermaid.
        #[arg(long, default_value = "svg", value_parser = ["svg", "dot", "mermaid"])]
        format: String,
        /// ports: hosts, server and the ports between them; services: the application layer.
        #[arg(long, default_value = "ports", value_parser = ["ports", "services"])]
        view: String,
        /// The environment (for `--view services`).
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        /// Where administrators and API users come from (drawn on the users box).
        #[arg(long = "admin-cidr")]
        admin_cidrs: Vec<String>,
        /// Write to this file instead of standard output.
        #[arg(long = "out")]
        out_file: Option<PathBuf>,
    },
    /// Benchmarks against a running server.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerCommand {
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    #[command(flatten)]
    pub run: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum ServerAction {
    /// The deployment's servers (several on one PostgreSQL datastore): which one is active,
    /// where agents and the other servers reach each, when each was last seen.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Write a backup of a data dir to one file (the server may be running).
    ///
    /// A consistent snapshot of the datastore and the CA sealed with the master key. The master
    /// key itself is never in it: keep master.key apart from the backups; a restore needs both.
    Backup {
        /// The data dir to back up.
        #[arg(long, default_value = "./corral-data", env = "CORRAL_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to write (never overwritten; written as FILE.partial, mode 0600,
        /// then renamed).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        out_format: Out,
    },
    /// Make a new data dir from a backup and its master key.
    ///
    /// The master key is the master.key of the data dir the backup was made from. Start
    /// `corral server --data-dir DIR` on the result: same CA (agents reconnect as they are),
    /// hosts, stacks, users and keys; a new admin.env.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new data dir (missing or empty; a restore never replaces a datastore).
        #[arg(long)]
        data_dir: PathBuf,
        /// The master.key of the data dir the backup was made from.
        #[arg(long)]
        master_key: PathBuf,
        #[command(flatten)]
        out_format: Out,
    },
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on (the one port: API, agent tunnel and UI).
    #[arg(long, default_value = "0.0.0.0:8443", env = "CORRAL_LISTEN")]
    pub listen: SocketAddr,
    /// Where the database, PKI and admin.env live.
    #[arg(long, default_value = "./corral-data", env = "CORRAL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Keep the datastore in PostgreSQL instead of SQLite in --data-dir:
    /// postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full&sslrootcert=CA.pem. Give a
    /// password in CORRAL_DATASTORE rather than on the command line (other users can read a
    /// process's arguments). The data dir still holds master.key, pki/ and admin.env.
    #[arg(long, env = "CORRAL_DATASTORE", hide_env_values = true, value_parser = parse_datastore)]
    pub datastore: Option<corral_server::store::PostgresUrl>,
    /// The URL agents dial (default: https://<hostname>:<port>).
    #[arg(long, env = "CORRAL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// With --datastore: the https:// URL the other servers of the deployment reach this one
    /// at (default: --advertise-url). Any number of servers may run on one database: the one
    /// holding its write lock is active, every other one relays its connections there and
    /// takes over when it stops (a crash: at once; a frozen server: after 4 s of silence).
    /// Behind a load balancer, give each server its own address here.
    #[arg(long, env = "CORRAL_PEER_URL", requires = "datastore")]
    pub peer_url: Option<String>,
    /// Serve this certificate chain (server certificate first, the CA agents pin last)…
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// …with this private key.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP, for use behind a TLS-terminating proxy only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,
    /// Start a new datastore in a data dir that holds corral's files but whose datastore
    /// (corral.db) is missing or empty. Without it the server refuses to start there, since
    /// starting over orphans every host. Keeps the CA and master.key; renames what it replaces
    /// (the empty corral.db and its -wal/-shm, admin.env, the local agent's state) to
    /// NAME.before-init-TIMESTAMP. Never replaces a datastore: refused when corral.db holds one.
    #[arg(long)]
    pub init: bool,
    /// Also register and run an agent for this machine, in this process.
    #[arg(long)]
    pub with_agent: bool,
    /// With --with-agent: the local agent does not join the overlay.
    #[arg(long, requires = "with_agent")]
    pub agent_no_overlay: bool,
    /// How often agents send heartbeats (each costs the server a little per agent: lower it
    /// for fast host-loss detection on small fleets).
    #[arg(long, default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub heartbeat_interval: std::time::Duration,
    /// Silence after which a tunnel is declared dead (a frozen host's kernel still holds its
    /// TCP connection open: only this silence tells).
    #[arg(long, default_value = "45s", value_parser = crate::duration::parse_duration)]
    pub dead_after: std::time::Duration,
    /// How long a container command waits for a disconnected host before it expires.
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration, hide = true)]
    pub command_ttl: std::time::Duration,
    /// How long a host may be silent before its stack replicas are placed elsewhere (counted
    /// from the last sign of life, so at least --dead-after).
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub reschedule_after: std::time::Duration,
    /// How many connections that have not (yet) authenticated are held at once; one more
    /// closes the oldest of them. Authenticated agents and API clients never count.
    #[arg(long, default_value_t = corral_server::bootstrap::DEFAULT_MAX_UNAUTHENTICATED)]
    pub max_unauthenticated_connections: usize,
    /// Most replicas one stack may have, all its services together (`up` and `scale` refuse
    /// more; each service has at most 1,000).
    #[arg(long, default_value_t = corral_server::bootstrap::DEFAULT_MAX_STACK_REPLICAS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_stack_replicas: u64,
    /// Delete security and audit events older than this.
    #[arg(long, default_value = "30d", value_parser = parse_positive_duration)]
    pub event_retention: std::time::Duration,
    /// Delete finished commands (answered, failed, expired) whose deadline passed longer ago
    /// than this.
    #[arg(long, default_value = "1d", value_parser = parse_positive_duration)]
    pub command_retention: std::time::Duration,
    /// Keep at most this many events (the oldest are deleted first).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_max_rows: u64,
    /// Record at most this many events of one kind from one host per minute one by one; the
    /// rest are counted and recorded as one summary event when the minute ends.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_rate_limit: u32,
    /// The window of --event-rate-limit.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, hide = true)]
    pub event_rate_window: std::time::Duration,
    /// Maximum size of one tunnel message.
    #[arg(long, default_value_t = corral_proto::DEFAULT_MAX_MESSAGE_BYTES, hide = true)]
    pub max_message_bytes: usize,
    /// Directory logins: `ldaps://HOST:636`, or `ldap://HOST:389` with --ldap-starttls (plain
    /// LDAP is refused). Users who are not local users with a password log in against it.
    #[arg(long, requires_all = ["ldap_ca", "ldap_user_dn", "ldap_group_base"])]
    pub ldap_url: Option<String>,
    /// Upgrade an ldap:// connection with StartTLS.
    #[arg(long, requires = "ldap_url")]
    pub ldap_starttls: bool,
    /// The directory's CA certificates (PEM): the only ones trusted for it.
    #[arg(long, requires = "ldap_url")]
    pub ldap_ca: Option<PathBuf>,
    /// The user's DN, bound as with their password: `uid={user},ou=people,dc=example,dc=org`.
    #[arg(long, requires = "ldap_url")]
    pub ldap_user_dn: Option<String>,
    /// Where groups (`groupOfNames` with the user's DN as `member`) are searched.
    #[arg(long, requires = "ldap_url")]
    pub ldap_group_base: Option<String>,
    /// GROUP=ENVIRONMENT:ROLE: members of directory group GROUP (its `cn`) get ROLE (owner,
    /// member, restricted, read-only) in ENVIRONMENT, read again at each login. Repeatable.
    #[arg(long = "ldap-role", requires = "ldap_url")]
    pub ldap_roles: Vec<String>,
    /// Members of this directory group are admins.
    #[arg(long, requires = "ldap_url")]
    pub ldap_admin_group: Option<String>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The server's URL, e.g. https://corral.example.com:8443. Repeat it (or give several,
    /// comma-separated, in the variable) for a deployment of several servers: the agent dials
    /// the next when one cannot be reached, and learns the others from the server too.
    #[arg(long, env = "CORRAL_AGENT_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Registration token (first start only).
    #[arg(long, env = "CORRAL_AGENT_TOKEN")]
    pub token: Option<String>,
    /// The server CA's checksum to pin: sha256:HEX.
    #[arg(long, env = "CORRAL_AGENT_CA_CHECKSUM")]
    pub ca_checksum: Option<String>,
    /// Where the credential and agent state live.
    #[arg(
        long,
        default_value = "/var/lib/corral-agent",
        env = "CORRAL_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// Host name to register (default: derived from the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Host label, k=v (repeatable); used by placement constraints.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The local Docker socket; only the agent talks to Docker, and only through it.
    #[arg(long, default_value = corral_agent::docker::DEFAULT_DOCKER_HOST, env = "DOCKER_HOST")]
    pub docker_host: String,
    /// Where the local dockerd reads registries' CAs (`DIR/HOST:PORT/ca.crt`): a registry added
    /// with `corral registry add --ca-file` has its CA installed there before a pull.
    #[arg(long, default_value = corral_agent::images::DEFAULT_CERTS_DIR)]
    pub docker_certs_dir: std::path::PathBuf,
    /// UDP port of the overlay socket, the only port the agent listens on.
    #[arg(long, default_value_t = corral_agent::overlay::DEFAULT_PORT, env = "CORRAL_AGENT_OVERLAY_PORT")]
    pub overlay_port: u16,
    /// MTU of the overlay (the TUN device and the containers' overlay network): the underlay's
    /// MTU less 80 (60 of IPv4, UDP and WireGuard, rounded as WireGuard does). Lower it where
    /// the hosts' network carries less than 1500 bytes; datagrams are sent unfragmented.
    #[arg(
        long,
        default_value_t = corral_agent::overlay::DEFAULT_MTU,
        value_parser = clap::value_parser!(u16).range(i64::from(corral_agent::overlay::MIN_MTU)..=i64::from(corral_agent::overlay::MAX_MTU)),
        env = "CORRAL_AGENT_OVERLAY_MTU"
    )]
    pub overlay_mtu: u16,
    /// Do not join the environment's overlay: no key pair, TUN device, routes or overlay
    /// network; this host's containers are reachable only on their published ports.
    #[arg(long)]
    pub no_overlay: bool,
}

/// A duration of at least one second.
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::duration::parse_duration(s)?;
    if d.as_secs() == 0 {
        return Err(format!("{s:?} is shorter than a second"));
    }
    Ok(d)
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be key=value"))?;
    corral_proto::validate_label(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// How to reach the server (flags or the variables in admin.env).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Server URL [env: CORRAL_SERVER]
    #[arg(long = "server", env = "CORRAL_SERVER", hide_env = true)]
    pub server: Option<String>,
    /// API key [env: CORRAL_API_KEY]
    #[arg(long, env = "CORRAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The server CA's checksum to pin [env: CORRAL_CA_CHECKSUM]
    #[arg(long, env = "CORRAL_CA_CHECKSUM")]
    pub ca_checksum: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct Out {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FirewallArgs {
    #[command(subcommand)]
    pub action: Option<FirewallAction>,
    #[command(flatten)]
    pub conn: Conn,
    /// markdown, aws-json, terraform, nftables, iptables, ip6tables, ufw or firewalld.
    #[arg(long, default_value = "markdown")]
    pub format: String,
    /// Whose rules: the server group, the host group, or all.
    #[arg(long, default_value = "all", value_parser = ["server", "host", "all"])]
    pub role: String,
    /// One machine (a host name, or the server's name `corral`); needed by nftables, iptables,
    /// ufw and firewalld.
    #[arg(long)]
    pub host: Option<String>,
    /// Where administrators come from: allows SSH (22/tcp) from it and limits the API to it.
    #[arg(long = "admin-cidr")]
    pub admin_cidrs: Vec<String>,
    /// Who may reach the API (default: the admin CIDRs, else anywhere).
    #[arg(long = "api-cidr")]
    pub api_cidrs: Vec<String>,
    /// Security group id of the server group (AWS formats).
    #[arg(long)]
    pub server_group: Option<String>,
    /// Security group id of the host group (AWS formats).
    #[arg(long)]
    pub host_group: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum FirewallAction {
    /// Make a host's agent install its rules as corral's own nftables table (`table inet
    /// corral`, no other table is touched). The agent rolls them back by itself unless it can
    /// open a new connection to the server within the confirmation window.
    Apply {
        #[command(flatten)]
        conn: Conn,
        /// The host (name or id).
        #[arg(long)]
        host: String,
        /// Only check that the rules load on the host (`nft -c`) and print them.
        #[arg(long)]
        dry_run: bool,
        /// Where administrators come from (SSH 22/tcp).
        #[arg(long = "admin-cidr")]
        admin_cidrs: Vec<String>,
        /// Who may reach the API.
        #[arg(long = "api-cidr")]
        api_cidrs: Vec<String>,
        /// Dead-man window: roll back unless the server is reachable within it.
        #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
        confirm_within: std::time::Duration,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Container name (unique in its environment).
    pub name: String,
    /// Image, which must be present on the host (corral never pulls implicitly).
    #[arg(long)]
    pub image: String,
    /// Host name or id (default: the connected host with the fewest containers).
    #[arg(long)]
    pub host: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Published port HOSTPORT:CONTAINERPORT[/udp] (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub ports: Vec<String>,
    /// Container label k=v (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub out: Out,
    /// Command and arguments, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Compose file (repeatable; later files override earlier ones). Default: compose.yaml,
    /// compose.yml, docker-compose.yaml or docker-compose.yml here.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Stack name (default: the files' top-level `name:`).
    #[arg(short = 'p', long = "project-name")]
    pub project: Option<String>,
    /// Variables for interpolation (repeatable). Default: `.env` beside the first file, if
    /// present.
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// The environment whose hosts run the stack.
    #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
    pub environment: String,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub out: Out,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until every service runs its desired replicas, showing progress; exit 1 if that
    /// does not happen within --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Every user with their roles.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// A new user; their password is asked for (or read with --password-stdin).
    Create {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// May do everything in every environment.
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        password_stdin: bool,
        /// No password: they use keys an admin makes for them.
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// Remove a user: their keys stop working at once.
    Rm {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// A new password (your own without NAME).
    Passwd {
        #[command(flatten)]
        conn: Conn,
        name: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user a role in an environment: owner (everything in it, members and tokens
    /// included), member (deploy, scale, run, logs, host operations), restricted (a member
    /// without host or token changes), read-only (listings, logs, diagrams, firewall export).
    Grant {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[arg(long)]
        env: String,
        #[arg(long, value_parser = ["owner", "member", "restricted", "read-only"])]
        role: String,
    },
    /// Take a user's role in an environment away.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[arg(long)]
        env: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Your keys (never their secrets).
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// A new key of yours, shown once.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// What it is for.
        #[arg(long)]
        name: String,
        /// How long it lives (default: until removed).
        #[arg(long, value_parser = crate::duration::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        out: Out,
    },
    /// Revoke one of your keys.
    Rm {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// The newest entries, oldest first.
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Only this actor's entries (an API key's name, `server`, `anonymous (…)`).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries since then: a duration ago (`2h`, `7d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// How many (at most 10,000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(corral_proto::api::MAX_AUDIT_PER_REQUEST)))]
        limit: u32,
        #[command(flatten)]
        out: Out,
    },
    /// Every entry after --after as JSON lines on stdout (with each entry's chained hash), for
    /// a SIEM or an archive; progress on stderr.
    Export {
        #[command(flatten)]
        conn: Conn,
        /// Start after this entry (0: from the first).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Check the chain from the first entry to the last: a changed or deleted entry is named;
    /// exits 1 if the chain is broken.
    Verify {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// List environments with their overlay range, host subnet size, hosts, mode and key
    /// generation.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// A new environment: its own hosts, tokens, stacks, overlay (with its own key) and
    /// policies. The overlay's shape is chosen here (see `set-overlay`).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Its name (a DNS label: lowercase letters, digits, '-').
        name: String,
        /// The overlay range (default 10.42.0.0/16; ranges of different environments may
        /// overlap, their hosts never peer).
        #[arg(long)]
        range: Option<String>,
        /// The size of each host's subnet (default /24: 253 containers a host).
        #[arg(long, value_name = "/PREFIX")]
        host_subnet: Option<String>,
        #[arg(long, value_parser = ["wireguard", "vxlan"])]
        mode: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Work in one environment from now on: commands that act in one default to it, names of
    /// hosts, stacks and containers are looked up in it, and listings show only it. Saved with
    /// the login (`corral login`); `CORRAL_ENV` and `--env` still win.
    Use {
        #[command(flatten)]
        conn: Conn,
        /// The environment.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Work in every environment you have a role in again.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Remove an environment that holds no host, stack or container (refused, saying what is
    /// left, otherwise); its registration tokens are revoked. `default` stays.
    Rm {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Choose the environment's overlay: `wireguard` (encrypted, UDP 51820, the default) or
    /// `vxlan` (unencrypted VXLAN, UDP 4789: only for networks you trust end to end).
    SetOverlay {
        #[command(flatten)]
        conn: Conn,
        /// The environment.
        name: String,
        #[arg(long, value_parser = ["wireguard", "vxlan"], required_unless_present_any = ["range", "host_subnet"])]
        mode: Option<String>,
        /// A new overlay range, e.g. `10.64.0.0/12` (4,095 hosts of a /24 each); every host's
        /// existing subnet must lie in it.
        #[arg(long)]
        range: Option<String>,
        /// The size of each host's subnet of the range, e.g. `/22` (1,021 containers a host;
        /// the default /24 holds 253, /28 to /16 allowed). Chosen before the first host joins:
        /// refused once a host holds a subnet.
        #[arg(long, value_name = "/PREFIX")]
        host_subnet: Option<String>,
    },
    /// Replace the environment's overlay pre-shared key; every agent gets the new one at once.
    RotateKey {
        #[command(flatten)]
        conn: Conn,
        /// The environment.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StackCommand {
    /// List stacks: replicas running of desired, converged or not.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers: desired and actual state side by side.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Show one container.
    Inspect {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Start a stopped container.
    Start {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Stop a container (SIGTERM, then SIGKILL after 10 s).
    Stop {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Remove a container.
    Rm {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a registration token and print the agent command to run on a host.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Environment the host joins.
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        env: String,
        /// Lifetime, e.g. 30m, 24h, 7d, or "never".
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many hosts may register with it (default: unlimited within its lifetime).
        #[arg(long)]
        max_uses: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// List registration tokens (their secrets are never shown again).
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
    /// Revoke a registration token.
    Rm {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts (of every environment you have a role in, or of one).
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Only this environment's.
        #[arg(long = "env")]
        environment: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Show one host in detail.
    Inspect {
        #[command(flatten)]
        conn: Conn,
        /// Host name or id.
        host: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a host: revoke its credential and tell its agent to stop.
    Rm {
        #[command(flatten)]
        conn: Conn,
        /// Host name or id.
        host: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one API route with two keys side by side (requests alternate A, B, A, B…): the
    /// cost of what differs between them, e.g. an admin's key and a user's whose roles are
    /// checked.
    Api {
        #[command(flatten)]
        conn: Conn,
        /// The route, e.g. /v1/hosts.
        #[arg(long, default_value = "/v1/hosts")]
        path: String,
        /// The second key (the first is --api-key).
        #[arg(long)]
        key_b: String,
        /// Requests per key.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[command(flatten)]
        out: Out,
    },
    /// Connect N simulated agents (real protocol, real TLS WebSockets, one process) to a running
    /// server; report connect time, server memory per agent and heartbeat round trips.
    Connect {
        #[command(flatten)]
        conn: Conn,
        /// Number of simulated agents.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Connections opened at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// How long to hold all agents connected while measuring heartbeats.
        #[arg(long, default_value = "30s", value_parser = crate::duration::parse_duration)]
        hold: std::time::Duration,
        /// Heartbeat interval of each simulated agent while holding.
        #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
        ping_interval: std::time::Duration,
        /// Keep the simulated hosts registered afterwards (default: remove them).
        #[arg(long)]
        keep: bool,
        /// Simulated agents that lose their tunnel (a server restarted under them) reconnect
        /// with their credential after the agents' own backoff (exponential, full jitter, 30 s
        /// cap) instead of ending; the report says when they came back, second by second.
        #[arg(long)]
        reconnect: bool,
        /// Each simulated agent (and the one that joins halfway through the hold) announces an
        /// overlay key and port, so it is every other's peer. Either way the second half of the
        /// hold measures one more agent joining: the server's CPU beyond its idle rate and the
        /// messages the others receive (the cost of one join).
        #[arg(long)]
        overlay: bool,
        /// Each simulated agent reports a Docker engine (and no container), so the scheduler
        /// places replicas on it; it never runs them (for views of many replicas, such as the
        /// web UI's benchmark).
        #[arg(long)]
        docker: bool,
        /// Read the server's CPU time from /proc/PID/stat instead of its /metrics (a server
        /// on this machine, of a release without `process_cpu_seconds_total`).
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// Deploy R replicas over N simulated agents (real tunnels; each answers `container_run`
    /// with the container running after --run-delay, and removals, without Docker) and time
    /// the control plane from `corral up` until the server has every replica running. Run it
    /// against a fresh server started with --max-stack-replicas at least --stack-replicas.
    Deploy {
        #[command(flatten)]
        conn: Conn,
        /// Number of simulated agents.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Replicas in all.
        #[arg(long, default_value_t = 10_000)]
        replicas: u64,
        /// Replicas per stack (services of 1,000); more stacks are deployed at once.
        #[arg(long, default_value_t = 10_000)]
        stack_replicas: u64,
        /// How long a simulated host takes to report a container running.
        #[arg(long, default_value = "0s", value_parser = crate::duration::parse_duration)]
        run_delay: std::time::Duration,
        /// Connections opened at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Give up when the replicas are not all running after this long.
        #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
        /// Keep the stacks and simulated hosts afterwards (default: `down`, timed, then remove
        /// the hosts).
        #[arg(long)]
        keep: bool,
        /// Read the server's CPU time from /proc/PID/stat instead of its /metrics.
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// Hold N connections that complete the TLS handshake and then send nothing (reopening
    /// each one the server closes), while timing `corral host ls` and watching the server's
    /// connected agents: what an unauthenticated flood costs everyone else.
    Idle {
        #[command(flatten)]
        conn: Conn,
        /// Idle connections to hold.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// TLS handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// How long to hold them.
        #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
        duration: std::time::Duration,
        /// Only flood: time nothing (run the measuring side in another process, e.g. one
        /// that is not at the flood's CPU priority).
        #[arg(long)]
        no_measure: bool,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Add a registry (or replace its account and CA). The password or token is read from
    /// standard input with --password-stdin, never from the command line.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// HOST[:PORT], as image references name it.
        registry: String,
        /// The account to pull with.
        #[arg(long, short = 'u', requires = "password_stdin")]
        username: Option<String>,
        /// Read the password or token from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// The CA that signed the registry's certificate (PEM), when it is a private one;
        /// each host's agent installs it for its dockerd before a pull.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Push the environment's built images (`build:`) here; every host pulls them from it.
        #[arg(long)]
        builds: bool,
        /// The environment.
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
    },
    /// List registries (never their passwords).
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Only this environment's.
        #[arg(long = "env")]
        environment: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a registry.
    Rm {
        #[command(flatten)]
        conn: Conn,
        registry: String,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Apply a policy document (YAML) as a new generation; every host enforces it within
    /// about a second. The previous generations are kept (20).
    Apply {
        #[command(flatten)]
        conn: Conn,
        /// The policy file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
    },
    /// The policy in force and what it lets flow between the deployed services.
    Show {
        #[command(flatten)]
        conn: Conn,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        #[command(flatten)]
        out: Out,
    },
    /// What changes for the deployed services: the generation in force against the one
    /// before it, or a draft (`-f`) against the one in force.
    Diff {
        #[command(flatten)]
        conn: Conn,
        /// A draft document to compare with the policy in force.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The old side: this generation.
        #[arg(long)]
        from: Option<i64>,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        #[command(flatten)]
        out: Out,
    },
    /// Apply an earlier generation again (as a new generation): the one before the one in
    /// force, or `--to N`.
    Rollback {
        #[command(flatten)]
        conn: Conn,
        #[arg(long = "to")]
        generation: Option<i64>,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
    },
    /// Would this connection be allowed? Names the rule that decides. Exits 1 when denied.
    Test {
        #[command(flatten)]
        conn: Conn,
        /// STACK/SERVICE, or an IPv4 address outside the overlay.
        #[arg(long)]
        from: String,
        /// STACK/SERVICE, or an IPv4 address outside the overlay.
        #[arg(long)]
        to: String,
        /// 5432/tcp, 53/udp, 5432 (TCP), or icmp.
        #[arg(long)]
        port: String,
        /// Test this document instead of the policy in force.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdmissionCommand {
    /// Apply a policy document (YAML); the previous version is kept.
    Apply {
        #[command(flatten)]
        conn: Conn,
        /// The policy file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
    },
    /// The policy in force, every key spelled out.
    Show {
        #[command(flatten)]
        conn: Conn,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        #[command(flatten)]
        out: Out,
    },
    /// Would these Compose files be admitted? Lists every refusal (rule, service, key);
    /// exits 1 if any. Deploys nothing.
    Test {
        #[command(flatten)]
        conn: Conn,
        /// Compose file (repeatable), as for `up`.
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
        #[arg(short = 'p', long = "project-name")]
        project: Option<String>,
        #[arg(long = "env-file")]
        env_files: Vec<PathBuf>,
        /// Test against this policy file instead of the environment's.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long = "env", env = "CORRAL_ENV", default_value_t = crate::config::default_env())]
        environment: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull an image on a host (with the environment's account for its registry).
    Pull {
        #[command(flatten)]
        conn: Conn,
        image: String,
        /// The host (name or id).
        #[arg(long)]
        host: String,
        #[command(flatten)]
        out: Out,
    },
    /// The images on a host.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        host: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove an image from a host (refused while a container uses it).
    Rm {
        #[command(flatten)]
        conn: Conn,
        image: String,
        #[arg(long)]
        host: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// List secrets. A secret goes with its stack: remove it from the Compose file and run
    /// `corral up` again (its services roll), or `corral down` the stack.
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Compose file (repeatable), as for `up`.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    #[arg(short = 'p', long = "project-name")]
    pub project: Option<String>,
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    #[command(flatten)]
    pub out: Out,
}

fn parse_datastore(s: &str) -> Result<corral_server::store::PostgresUrl, String> {
    corral_server::store::PostgresUrl::parse(s).map_err(|e| e.to_string())
}
