//! The control plane's pure core. The server gathers state from its datastore and its live
//! tunnels, calls these functions, and carries out what they return; nothing here does I/O,
//! reads a clock or draws a random number (time is an argument), so every rule is tested
//! without a socket and the crate boundary keeps it that way.
//!
//! - [`admission`]: an environment's admission policy (registries, digests, tags, options
//!   that break isolation) and what it refuses of a container template.
//! - [`define`]: a loaded Compose project becomes stored service definitions
//!   ([`define::ServiceDef`], hashed so a change of definition is visible).
//! - [`reconcile`]: one pass over one stack ([`reconcile::decide`]), and the policies the pass
//!   depends on: when a disconnected host counts as lost, when a host or a replica is ready.
//! - [`overlay`]: overlay address leases and each host's overlay configuration.
//! - [`states`]: the states of containers and stacks as the control plane records them.
//! - [`unplaced`]: replicas that cannot be placed, grouped by reason with counts (bounded,
//!   however many replicas there are).

pub mod admission;
pub mod audit;
pub mod define;
pub mod overlay;
pub mod reconcile;
pub mod roles;
pub mod states;
pub mod unplaced;
