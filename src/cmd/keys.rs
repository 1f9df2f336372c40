//! `revoker keys generate`: a P-256 key pair for a team that replays remotely.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new P-256 private key (PKCS#8 PEM, mode 0600) and print the key-JSON
    /// entry to add to the scanner's key file on the receiver.
    Generate {
        /// Where to write the private key (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Key identifier to publish (default: derived from the public key).
        #[arg(long)]
        key_id: Option<String>,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate { out, key_id } => generate_key(&out, key_id),
    }
}

fn generate_key(out: &std::path::Path, key_id: Option<String>) -> anyhow::Result<()> {
    let entry = revoker::signature::generate_key_file(out, key_id.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&entry)?);
    eprintln!(
        "wrote {} (keep it secret); add the entry above to the scanner's key file on the receiver",
        out.display()
    );
    Ok(())
}
