//! The `revoker` binary: parse the command line, set up logging, dispatch to `cmd/`.

mod cmd;

use std::process::ExitCode;

use cmd::token::TokenCommand;
use cmd::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    // Offline and instant: no runtime, no logging.
    if let Command::Token(TokenCommand::Check { token, formats }) = &cli.command {
        return cmd::token::check(token, formats.token_formats);
    }
    revoker::telemetry::init("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", cmd::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
