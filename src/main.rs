//! The `hvroute` binary: parse the command line, run the command, map errors to exit codes.
//! Everything else lives in the library; see `cli` for the commands.

fn main() {
    std::process::exit(hvroute::cli::main());
}
