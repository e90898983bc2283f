//! Facts about this process: resident memory, the open-file limit.

/// Reads this process's resident set size from `/proc/self/statm`, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Raises the soft open-file limit to the hard limit. Returns (soft, hard) after the change.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(hard) = lim.maximum
        && lim.current != Some(hard)
    {
        lim.current = Some(hard);
        setrlimit(Resource::Nofile, lim).map_err(std::io::Error::from)?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    ))
}
