//! `wsgate passwd`: an argon2id hash of a password read from standard input, for `basic_users`.

use crate::fail;
use std::process::ExitCode;

pub(crate) fn passwd() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        return fail(&format!(
            "cannot read the password from standard input: {e}"
        ));
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return fail(
            "empty password: type it on standard input, e.g. `printf %s 'secret' | wsgate passwd`",
        );
    }
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&wsgate_server::ids::random_bytes::<16>());
    match wsgate_admission::auth::hash_password(password, &salt) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("hashing failed: {e}")),
    }
}
