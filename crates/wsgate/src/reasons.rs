//! `wsgate reasons`: every reason code of the catalog, as a table or as docs/refusals.md.

use std::process::ExitCode;
use wsgate_reasons::Reason;

/// Prints the catalog; `markdown` prints the user documentation instead.
pub(crate) fn reasons(markdown: bool) -> ExitCode {
    if markdown {
        print!("{}", wsgate_reasons::markdown());
    } else {
        for r in Reason::ALL {
            let status = if r.is_refusal() {
                r.status().to_string()
            } else {
                "doctor".into()
            };
            println!("{:<28} {:<6} {}", r.code(), status, r.message());
        }
    }
    ExitCode::SUCCESS
}
