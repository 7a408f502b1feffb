//! The open-files limit. Every connection holds a descriptor (a proxied one two), and the soft
//! limit a service usually starts with (1,024 under systemd) would cap the gateway at about a
//! thousand clients while the hard limit allows far more; like Go's runtime and nginx's
//! `worker_rlimit_nofile`, the server raises its soft limit to the hard one when it starts.
//!
//! Through rustix's safe wrappers of getrlimit/setrlimit, so the workspace needs no `unsafe`.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft and hard limits on open files, when the system says (`u64::MAX` for unlimited).
pub fn open_files() -> Option<(u64, u64)> {
    let rl = getrlimit(Resource::Nofile);
    Some((
        rl.current.unwrap_or(u64::MAX),
        rl.maximum.unwrap_or(u64::MAX),
    ))
}

/// Raises the soft limit on open files to the hard limit; the limits before and after, or
/// `None` when nothing changed (already equal, or the system refused).
pub fn raise_open_files() -> Option<(u64, u64)> {
    let rl = getrlimit(Resource::Nofile);
    let (soft, hard) = (
        rl.current.unwrap_or(u64::MAX),
        rl.maximum.unwrap_or(u64::MAX),
    );
    if soft >= hard {
        return None;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: rl.maximum,
            maximum: rl.maximum,
        },
    )
    .ok()?;
    Some((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let _ = raise_open_files();
        let (soft, hard) = open_files().expect("getrlimit works on Linux");
        assert_eq!(soft, hard);
    }
}
