//! `wsgate cert dev`: a self-signed certificate and key for development.

use crate::fail;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// Write a self-signed certificate and key for development.
    Dev {
        /// Host names or IP addresses to include (localhost, 127.0.0.1 and ::1 are always added).
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

pub(crate) fn cert_dev(hosts: &[String], out: &std::path::Path, days: u32) -> ExitCode {
    let (cert, key) = match wsgate_server::tls::dev_cert(hosts, days) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        return fail(&format!("cannot create {}: {e}", out.display()));
    }
    let (cp, kp) = (out.join("cert.pem"), out.join("key.pem"));
    if let Err(e) = std::fs::write(&cp, cert) {
        return fail(&format!("cannot write {}: {e}", cp.display()));
    }
    if let Err(e) = write_private(&kp, key.as_bytes()) {
        return fail(&format!("cannot write {}: {e}", kp.display()));
    }
    println!(
        "wrote {} and {} (self-signed, {days} days, for {})",
        cp.display(),
        kp.display(),
        hosts.join(", ")
    );
    println!(
        "use them in a listener:\n  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"",
        cp.display(),
        kp.display()
    );
    println!(
        "clients must trust cert.pem, e.g. `python3 -m websockets` with SSL_CERT_FILE={}",
        cp.display()
    );
    ExitCode::SUCCESS
}

/// Private keys are written readable by the owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}
