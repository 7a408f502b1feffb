//! The TOML configuration, in layers: [`raw`] (the file as written; unknown keys are errors),
//! [`validate`] (every key checked; errors name the file, the key path and the fix), [`build`]
//! (the gates' settings, reading the key files they name) and [`model`] (the immutable result a
//! server runs on). [`from_text`] composes them: one function from text (and the files it names)
//! to a model, so that `serve`, `check` and a reload all load a configuration the same way.

pub mod build;
pub mod model;
mod raw;
mod validate;
pub mod values;

use std::net::SocketAddr;
use std::path::Path;

pub use build::{Disk, Files, DEFAULT_SOURCES};
pub use model::*;
pub use values::parse_duration;

/// The configuration `wsgate serve` uses when given none: loopback only, explained refusals.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

/// A configuration mistake, located precisely enough to fix without reading our source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", key_prefix(.key))]
pub struct ConfigError {
    /// The file the configuration came from (`<embedded default>` for the built-in one).
    pub file: String,
    /// The key path, e.g. `route[1].upstream`; empty for syntax errors, which carry a line instead.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Loads a configuration from its text: parse, validate, then build the gates' settings,
/// reading the key files it names through `files`. Relative paths are relative to `base`;
/// `source` names the text in errors. Nothing else is read and nothing is started.
pub fn from_text(
    text: &str,
    source: &str,
    base: &Path,
    files: &dyn Files,
) -> Result<Config, ConfigError> {
    let raw = raw::parse(text, source)?;
    let checked = validate::validate(raw, source, base)?;
    let config = build::policies(checked, source, base, files)?;
    config.admin_exposure()?;
    Ok(config)
}

impl Config {
    /// Parses and validates configuration text (key files relative to the working directory).
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        from_text(text, source, Path::new("."), &Disk)
    }

    /// Reads and validates a configuration file; its relative paths are relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        from_text(&text, &source, base, &Disk)
    }

    /// Replaces the first listener's address (the `--listen` flag), keeping the rule that an
    /// unset `explain` is `full` on loopback only.
    pub fn override_first_listener(&mut self, address: SocketAddr) {
        if let Some(l) = self.listeners.first_mut() {
            l.address = address;
            if !l.explain_explicit {
                l.explain = values::default_explain(address);
            }
        }
    }

    /// The embedded development configuration.
    pub fn embedded() -> Config {
        match Config::parse(EMBEDDED_DEFAULT, "<embedded default>") {
            Ok(c) => c,
            // The embedded text is checked by a unit test; reaching this is a build defect.
            Err(e) => panic!("embedded default configuration is invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Key files held in memory: loading reads nothing else.
    struct Memory(HashMap<PathBuf, Vec<u8>>);

    impl Files for Memory {
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn loading_is_a_function_of_the_text_and_the_files() {
        let text = format!(
            "{MIN}[route.auth]\nsources = [\"bearer\"]\n[[route.auth.jwt]]\nsecret_file = \"keys/hs.key\"\n"
        );
        let base = Path::new("/etc/wsgate");
        let files = Memory(HashMap::from([(
            base.join("keys/hs.key"),
            b"a-secret-of-at-least-thirty-two-bytes!!\n".to_vec(),
        )]));
        let c = from_text(&text, "mem.toml", base, &files).unwrap();
        assert_eq!(c.routes[0].policy(0).auth.as_ref().unwrap().jwt.len(), 1);
        assert_eq!(
            c.routes[0].pattern,
            crate::pattern::Pattern::parse("/ws").unwrap()
        );
        let e = from_text(&text, "mem.toml", base, &Memory(HashMap::new())).unwrap_err();
        assert_eq!(e.key, "route[0].auth.jwt[0].secret_file", "{e}");
        assert!(e.message.contains("/etc/wsgate/keys/hs.key"), "{e}");
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    const MIN: &str =
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/ws\"\nkind = \"echo\"\n";

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.listeners[0].explain, Explain::Full);
        assert!(c.routes.iter().any(|r| r.kind == RouteKind::Channel));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(c.listeners[0].explain, Explain::Full);
        let c = parse(&MIN.replace("127.0.0.1:0", "0.0.0.0:0")).unwrap();
        assert_eq!(
            c.listeners[0].explain,
            Explain::Code,
            "non-loopback defaults to code"
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e = parse(&format!("{MIN}[limits]\nmax_conections = 3\n")).unwrap_err();
        assert_eq!(e.key, "limits.max_conections");
        assert!(
            e.message.contains("max_connections"),
            "the message lists the valid keys: {e}"
        );
        let e = parse(&MIN.replace("kind = \"echo\"", "kind = \"echo\"\ncolour = 1")).unwrap_err();
        assert_eq!(e.key, "route[0].colour", "{e}");
        assert!(
            e.to_string().starts_with("test.toml: `route[0].colour`: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_values_name_their_path_and_the_fix() {
        let e = parse(&MIN.replace("127.0.0.1:0", "localhost")).unwrap_err();
        assert_eq!(e.key, "listener[0].address");
        let e = parse(&MIN.replace("\"echo\"", "\"mirror\"")).unwrap_err();
        assert_eq!(e.key, "route[0].kind", "{e}");
        let e = parse(&format!("{MIN}[limits]\nidle_timeout = \"10 parsecs\"\n")).unwrap_err();
        assert_eq!(e.key, "limits.idle_timeout");
        let e = parse(&format!(
            "{MIN}[limits]\nping_interval = \"2m\"\nidle_timeout = \"1m\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "limits.ping_interval");
        let e = parse(&MIN.replace("\"echo\"", "\"proxy\"")).unwrap_err();
        assert_eq!(e.key, "route[0].upstream");
        let e = parse(&MIN.replace("\"echo\"", "\"proxy\"\nupstream = \"http://x/\"")).unwrap_err();
        assert!(e.message.contains("ws://"), "{e}");
        let e = parse(&MIN.replace("\"echo\"", "\"echo\"\nupstream = \"ws://x/\"")).unwrap_err();
        assert_eq!(e.key, "route[0].upstream");
        let e = parse(&MIN.replace("/ws\"", "ws\"")).unwrap_err();
        assert_eq!(e.key, "route[0].path");
        let e = parse("[[listener]\n").unwrap_err();
        assert!(e.key.is_empty() && e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn upstream_urls() {
        let u = values::parse_upstream("wss://[::1]/a?b=c", None, Duration::from_secs(1))
            .unwrap()
            .endpoint;
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("::1", 443, "/a?b=c")
        );
        let u = values::parse_upstream("ws://127.0.0.1:9000", None, Duration::from_secs(1))
            .unwrap()
            .endpoint;
        assert_eq!(
            (u.port, u.path_and_query.as_str(), u.authority.as_str()),
            (9000, "/", "127.0.0.1:9000")
        );
    }

    #[test]
    fn the_readme_configuration_example_is_valid() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let text = &readme[start..start + readme[start..].find("```").expect("closed")];
        let c = parse(text).unwrap_or_else(|e| panic!("README example: {e}"));
        assert!(c.listeners[0].tls.is_some() && c.routes.len() == 2);
        assert!(!c.routes[0].policy(0).authz.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
