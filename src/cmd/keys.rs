//! `revoker keys generate`: a P-256 key pair for a team that replays remotely.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use revoker::domain::terminal::terminal_safe;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new P-256 private key (PKCS#8 PEM, mode 0600) and print a complete key
    /// file for the receiver (`{"public_keys":[…]}`, usable as `--scanner NAME=FILE`), or
    /// add its entry to one with --key-file.
    Generate {
        /// Where to write the private key (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Key identifier to publish (default: derived from the public key).
        #[arg(long)]
        key_id: Option<String>,
        /// Add the public key to this key file (created if missing; its other keys are
        /// kept, the same key id refused) instead of printing one.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate {
            out,
            key_id,
            key_file,
        } => generate_key(&out, key_id, key_file.as_deref()),
    }
}

fn generate_key(out: &Path, key_id: Option<String>, key_file: Option<&Path>) -> anyhow::Result<()> {
    // A key file that cannot take the entry (not one, or the id taken) is refused before
    // a private key is written. (A derived id is new: it hashes a new key.)
    if let Some(file) = key_file {
        revoker::signature::check_key_file_takes(file, key_id.as_deref().unwrap_or_default())?;
    }
    let entry = revoker::signature::generate_key_file(out, key_id.as_deref())?;
    // Shown quoted and escaped, as every name in this output (the operator's own).
    let id = format!(
        "\"{}\"",
        terminal_safe(entry["key_identifier"].as_str().unwrap_or_default())
    );
    match key_file {
        Some(file) => {
            revoker::signature::add_to_key_file(file, &entry)?;
            let file = terminal_safe(&file.display().to_string()).into_owned();
            eprintln!(
                "wrote {} (keep it secret) and added its public key {id} to {file}; \
                 serve it with --scanner NAME={file}",
                terminal_safe(&out.display().to_string()),
            );
        }
        None => {
            let file = serde_json::json!({ "public_keys": [entry] });
            println!("{}", serde_json::to_string_pretty(&file)?);
            eprintln!(
                "wrote {} (keep it secret); the key file above holds its public key {id}: \
                 save it on the receiver and add --scanner NAME=FILE (or use --key-file)",
                terminal_safe(&out.display().to_string())
            );
        }
    }
    Ok(())
}
