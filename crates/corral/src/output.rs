//! Output for people (aligned tables) and for programs (`-o json`).

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::cli::Format;

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the first column with a leading space under this preset; trim it.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints `value` as JSON, or as the table `render` makes of it.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => println!("{}", render(value)),
    }
    Ok(())
}
