//! The `sd-webui-supervisor` binary: parses the command line and hands over to the
//! library. Everything that can be tested lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sd_webui_supervisor::cli::main(sd_webui_supervisor::cli::Cli::parse())
}
