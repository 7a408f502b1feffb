//! The open-files limit. Every connection holds a descriptor (a proxied one two), and the soft
//! limit a service usually starts with (1,024 under systemd) would cap the gateway at about a
//! thousand clients while the hard limit allows far more; like Go's runtime and nginx's
//! `worker_rlimit_nofile`, the server raises its soft limit to the hard one when it starts.

/// The soft and hard limits on open files, when the system says.
pub fn open_files() -> Option<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return None;
    }
    Some((rl.rlim_cur, rl.rlim_max))
}

/// Raises the soft limit on open files to the hard limit; the limits before and after, or
/// `None` when nothing changed (already equal, or the system refused).
pub fn raise_open_files() -> Option<(u64, u64)> {
    let (soft, hard) = open_files()?;
    if soft >= hard {
        return None;
    }
    let rl = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct it is given, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return None;
    }
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
