//! Every size limit of the loader, in one place. Input beyond them is refused with an error
//! before (or while) it is parsed, never after it has been expanded in memory.

/// Largest Compose or env file accepted, in bytes (checked before parsing).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most Compose files in one load (`-f` given more often is refused).
pub const MAX_FILES: usize = 16;
/// Most env files (interpolation and `env_file:` files together) in one load.
pub const MAX_ENV_FILES: usize = 64;
/// Most events (nodes, keys, …) the YAML parser produces for one file.
pub const MAX_YAML_EVENTS: usize = 500_000;
/// Most alias (`*ref`) uses in one file.
pub const MAX_YAML_ALIASES: usize = 10_000;
/// Most events replayed by alias expansion across one file: this is what stops an alias bomb
/// ("billion laughs"), whose expansion grows exponentially while its text stays small.
pub const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;
/// Deepest nesting of YAML collections.
pub const MAX_YAML_DEPTH: usize = 20;
/// Deepest nesting of `${…}` inside an interpolation default.
pub const MAX_INTERPOLATION_DEPTH: usize = 16;
/// Longest string any interpolation may produce.
pub const MAX_INTERPOLATED_BYTES: usize = 1024 * 1024;
/// Most errors reported at once (schema violations in particular); when there were more, one
/// last error says how many.
pub const MAX_ERRORS: usize = 20;
/// Most warnings listed; when there are more, one last warning says how many.
pub const MAX_WARNINGS: usize = 100;
/// Longest message an error or a warning keeps, in bytes (a longer one is cut and says how
/// long it was).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest file name or key path an error or a warning keeps, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most services in one project (all files merged).
pub const MAX_SERVICES: usize = 1000;
/// Most replicas a service may ask for, in a Compose file and with `corral scale` alike (the
/// server's `scale` uses this constant).
pub const MAX_REPLICAS: u32 = 1000;
