//! `wif-agent`: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    wif_agent::cli::main()
}
