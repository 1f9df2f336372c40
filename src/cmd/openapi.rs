//! `revoker openapi`: the OpenAPI 3.1 document of both listeners on stdout, as
//! `GET /openapi.json` serves it (pretty JSON, stable key order, a trailing newline):
//! `revoker openapi > docs/openapi.json` regenerates the committed copy.

use std::io::Write;

pub fn run() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(revoker::http::openapi::document().as_bytes())?;
    out.flush()?;
    Ok(())
}
