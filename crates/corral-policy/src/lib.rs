//! Network policy between stack services, pure: no I/O, no clock.
//!
//! - [`document`]: the policy document people write (YAML), read and checked: `default`,
//!   `ingress` and `egress` actions, `allow` and `deny` rules with `from`/`to` selectors
//!   (stack, service, labels, or a CIDR outside the overlay), Rancher's `within` and
//!   `between: {groupBy}` shorthands, and ports.
//! - [`evaluate`]: what a document decides for one connection and which rule decided it (a
//!   deny rule beats every allow rule); what it names that matches nothing.
//! - [`compile`]: a document and the environment's replicas become one host's
//!   [`compile::Ruleset`], whose [`compile::Ruleset::decide`] is the reference meaning of
//!   the nftables rules.
//! - [`flows`]: what may flow from one service to another, whatever the port, and which
//!   rules shaped it (for `show`, `diff`, the firewall export and the services diagram).
//! - [`nft`]: a rule set as one atomic `nft -f` script.
//! - [`stack`]: a stack's own rules (`x-corral: policy:`), confined to the stack, and how
//!   they join the environment's document.
//! - [`net`]: IPv4 networks, protocols, port ranges.
//!
//! The server uses it to check documents, answer `corral policy test` and draw the services
//! diagram; the agent to turn the document and the name table into its host's rules.

#![deny(missing_docs)]

pub mod compile;
pub mod document;
pub mod evaluate;
pub mod flows;
pub mod net;
pub mod nft;
pub mod stack;

pub use compile::{Class, Ruleset, Verdict, compile};
pub use document::{Action, Document, DocumentError, Rule, RuleId, Scope, Selector, Within, parse};
pub use evaluate::{DecidedBy, Decision, Direction, Endpoint, Workload, evaluate, unmatched};
pub use flows::{Access, Flow, flow, flows};
pub use net::{Cidr, PortRange, Proto, Traffic};
pub use stack::{StackRules, combine};
